/* The scheduler reads and writes the workers' store through their module (worker/storage.c:
 * the same URL syntax, SigV4 signing and retries). Stores are opened once per URL and kept
 * for the life of the process: libmicrohttpd's threads and the tracker share them (a
 * pa_storage is read-only after opening; every request makes its own curl handle). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "scheduler/sched.h"

#define MAX_STORES 16 /* --storage, plus the few targets admin keys give jobs */

static pthread_mutex_t stores_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  char url[1100];
  pa_storage *s;
} stores[MAX_STORES];

static int open_url(const char *url, pa_storage **out) {
  int rc = PA_OK, i;
  pthread_mutex_lock(&stores_mu);
  for (i = 0; i < MAX_STORES && stores[i].s; i++)
    if (!strcmp(stores[i].url, url)) break;
  if (i == MAX_STORES) rc = pa_fail(PA_ERR_UNSUPPORTED, "storage: more than %d output targets", MAX_STORES);
  else if (!stores[i].s && (rc = pa_storage_open(url, NULL, &stores[i].s)) == PA_OK)
    snprintf(stores[i].url, sizeof stores[i].url, "%s", url);
  *out = rc == PA_OK ? stores[i].s : NULL;
  pthread_mutex_unlock(&stores_mu);
  return rc;
}

int sched_storage(const sched_config *c, pa_storage **out) {
  *out = NULL;
  if (!c->storage[0])
    return pa_fail(PA_ERR_UNSUPPORTED, "no --storage: give the scheduler the workers' store "
                                       "(s3://BUCKET/PREFIX or file:///DIR)");
  return open_url(c->storage, out);
}

int sched_storage_of_job(const sched_config *c, const pw_job *job, pa_storage **out) {
  if (!job->has_output) return sched_storage(c, out);
  char url[1100]; /* as the worker opens it (worker/worker_job.c) */
  if (job->output.dir)
    snprintf(url, sizeof url, "file://%s%s", job->output.dir[0] == '/' ? "" : "/", job->output.dir);
  else
    snprintf(url, sizeof url, "s3://%s/%s", job->output.bucket, job->output.prefix ? job->output.prefix : "");
  return open_url(url, out);
}

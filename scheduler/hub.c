/* In-process fan-out of worker events to the threads that wait for them (SSE streams,
 * Prefer: wait). A ring of the most recent events with a sequence number: a waiter keeps a
 * cursor and scans forward for its job. A waiter that falls behind the ring re-reads the job
 * hash instead (callers always do on timeout), so nothing is lost, only coalesced. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scheduler/sched.h"

#define HUB_RING 4096

typedef struct {
  char job_id[PW_MAX_ID_BYTES + 1];
  char type[16];
  char *data;
} slot;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static slot ring[HUB_RING];
static uint64_t next_seq;
static bool stopping;

uint64_t hub_cursor(void) {
  pthread_mutex_lock(&mu);
  uint64_t s = next_seq;
  pthread_mutex_unlock(&mu);
  return s;
}

void hub_publish(const char *job_id, const char *type, const char *json) {
  char *copy = strdup(json ? json : "{}");
  if (!copy) return; /* out of memory: waiters fall back to polling the hash */
  pthread_mutex_lock(&mu);
  slot *s = &ring[next_seq % HUB_RING];
  free(s->data);
  snprintf(s->job_id, sizeof s->job_id, "%s", job_id);
  snprintf(s->type, sizeof s->type, "%s", type);
  s->data = copy;
  next_seq++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

/* Looks for the job's next event in [*cursor, next_seq); with the lock held. */
static int scan(uint64_t *cursor, const char *job_id, hub_event *out) {
  if (next_seq - *cursor > HUB_RING) *cursor = next_seq - HUB_RING;
  for (; *cursor < next_seq; (*cursor)++) {
    slot *s = &ring[*cursor % HUB_RING];
    if (strcmp(s->job_id, job_id) != 0) continue;
    snprintf(out->type, sizeof out->type, "%s", s->type);
    out->data = strdup(s->data);
    (*cursor)++;
    return out->data != NULL;
  }
  return 0;
}

int hub_wait(uint64_t *cursor, const char *job_id, int timeout_ms, hub_event *out) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&mu);
  int got = 0;
  while (!(got = scan(cursor, job_id, out)) && !stopping)
    if (pthread_cond_timedwait(&cv, &mu, &until) == ETIMEDOUT) {
      got = scan(cursor, job_id, out);
      break;
    }
  pthread_mutex_unlock(&mu);
  return got;
}

void hub_shutdown(void) {
  pthread_mutex_lock(&mu);
  stopping = true;
  pthread_cond_broadcast(&cv);
  for (int i = 0; i < HUB_RING; i++) {
    free(ring[i].data);
    ring[i].data = NULL;
    ring[i].job_id[0] = 0;
  }
  pthread_mutex_unlock(&mu);
}

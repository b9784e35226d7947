/* JSON-lines logging for the worker (see log.h). */
#include "worker/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pa_log_level min_level = PA_LOG_INFO;
static char worker_name[128];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void pa_log_set_level(pa_log_level level) { min_level = level; }

int pa_log_level_from_name(const char *name) {
  for (int i = 0; i < 4; i++)
    if (!strcmp(name, level_names[i])) return i;
  return -1;
}

void pa_log_set_worker(const char *name) { snprintf(worker_name, sizeof worker_name, "%s", name ? name : ""); }

/* "2025-01-31T12:00:00.123Z": sortable and unambiguous across hosts */
static void iso_now(char *buf, size_t cap) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

void pa_log(pa_log_level level, const char *job_id, json_t *fields, const char *fmt, ...) {
  if (level < min_level) {
    json_decref(fields);
    return;
  }
  char ts[40], msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  iso_now(ts, sizeof ts);
  json_t *o = json_object();
  if (!o) {
    json_decref(fields);
    return;
  }
  json_object_set_new(o, "ts", json_string(ts));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "msg", json_stringn(msg, strlen(msg))); /* invalid UTF-8 -> null, not a lost line */
  if (job_id) json_object_set_new(o, "job_id", json_string(job_id));
  if (worker_name[0]) json_object_set_new(o, "worker", json_string(worker_name));
  if (json_is_object(fields)) json_object_update(o, fields);
  json_decref(fields);
  char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (!line) return;
  flockfile(stderr);
  fputs(line, stderr);
  fputc('\n', stderr);
  funlockfile(stderr);
  free(line);
}

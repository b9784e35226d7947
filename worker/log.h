/* Structured logs: one JSON object per line on stderr ({"ts":..., "level":..., "msg":...,
 * "job_id":..., extra fields}), so that a log shipper can index them without parsing text.
 * Lines are written with one fputs under the stdio lock, so threads never interleave. */
#ifndef PAELLA_WORKER_LOG_H
#define PAELLA_WORKER_LOG_H

#include <jansson.h>

typedef enum { PA_LOG_DEBUG, PA_LOG_INFO, PA_LOG_WARN, PA_LOG_ERROR } pa_log_level;

/* Lines below `level` are dropped (default info). */
void pa_log_set_level(pa_log_level level);
/* "debug", "info", "warn", "error" -> level; -1 when unknown. */
int pa_log_level_from_name(const char *name);
/* The worker's consumer name, added to every line as "worker" (copied; NULL clears). */
void pa_log_set_worker(const char *name);

/* job_id may be NULL; `fields` (may be NULL) is a JSON object whose members are added to the
 * line; it is consumed (decref'd). */
void pa_log(pa_log_level level, const char *job_id, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif

/* Where a webhook's signing secret comes from, for the worker (which signs) and the scheduler
 * (which refuses at submission a webhook whose secret no worker could find). */
#ifndef PAELLA_WORKER_WEBHOOK_SECRET_H
#define PAELLA_WORKER_WEBHOOK_SECRET_H

/* secret_id "wh-1" -> the file DIR/wh-1 (when secrets_dir is set and the file exists), else
 * the variable PAELLA_WEBHOOK_SECRET_WH_1 (uppercased, other characters as '_'); no
 * secret_id -> PAELLA_WEBHOOK_SECRET. The secret malloc'd, or NULL when there is none. */
char *pa_webhook_find_secret(const char *secrets_dir, const char *secret_id);

#endif

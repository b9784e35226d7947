/* Webhook delivery with Standard Webhooks signatures: headers webhook-id, webhook-timestamp,
 * webhook-signature = "v1," base64(HMAC-SHA256(secret, id "." timestamp "." body)), where the
 * secret is "whsec_" + base64 of the key bytes. Retries with exponential backoff and jitter,
 * honouring 429 Retry-After and giving up on 410; the same webhook-id on every retry. Targets
 * on loopback or private networks are refused unless allowed (SSRF guard). */
#ifndef PAELLA_WORKER_WEBHOOK_H
#define PAELLA_WORKER_WEBHOOK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/error.h"

/* The signature header value for (secret "whsec_...", id, timestamp seconds, body). */
int pa_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const void *body,
                    size_t len, char *out, size_t cap);

typedef struct {
  int max_attempts;       /* default 6 */
  int base_delay_ms;      /* first backoff (default 500), doubled each retry, +-20% jitter */
  int max_delay_ms;       /* cap (default 60000) */
  int timeout_ms;         /* per attempt (default 10000) */
  bool allow_private;     /* permit loopback / private / link-local targets (tests, LAN setups) */
  const atomic_bool *abort; /* optional: when it turns true the attempt in flight is cut short
                             * (within a second) and no other starts: a stopping worker */
} pa_webhook_options;

typedef struct {
  int attempts;           /* attempts made */
  int last_status;        /* last HTTP status (0 = connection failure) */
  bool delivered;         /* a 2xx was received */
  bool aborted;           /* cut short by o->abort: the attempt does not count */
  long retry_after_ms;    /* the last 429/503 response's Retry-After, -1 when none */
} pa_webhook_report;

/* The delay before retry number `retry` (0 = the first retry): base * 2^retry, capped, +-20%
 * jitter, with o's defaults for unset fields. */
long pa_webhook_backoff_ms(const pa_webhook_options *o, int retry);

/* POSTs body (JSON) to url, signed with secret (NULL: unsigned, for operators who allow it),
 * retrying as documented above. msg_id must be stable for the event (e.g. "<job id>.<event>"):
 * receivers deduplicate on it. */
int pa_webhook_deliver(const char *url, const char *secret, const char *msg_id, const char *body,
                       const pa_webhook_options *o, pa_webhook_report *report);

#endif

/* Every limit and default of the wire protocol, in one place. proto/validate.c is the only
 * code that enforces the per-field limits; proto/scan.c enforces the structural ones (message
 * bytes, depth, element count) before msgpack-c allocates anything. docs/protocol.md lists
 * the same numbers for clients: change both together. */
#ifndef PAELLA_PROTO_LIMITS_H
#define PAELLA_PROTO_LIMITS_H

/* ---- versioning ---------------------------------------------------------------------- */
#define PW_VERSION 1 /* schema version written by this code; decoders accept 1..PW_VERSION */

/* ---- structure (checked before allocation) ------------------------------------------- */
#define PW_MAX_IMAGE_BYTES (16u << 20)  /* one input image or mask, decoded bytes */
/* Two inline images plus every other field; a bigger message is rejected unread. */
#define PW_MAX_MESSAGE_BYTES (2u * PW_MAX_IMAGE_BYTES + (1u << 20))
/* Base64 makes JSON images 4/3 larger. */
#define PW_MAX_JSON_BYTES (PW_MAX_MESSAGE_BYTES / 3u * 4u + (1u << 20))
#define PW_MAX_DEPTH 16        /* nesting of maps/arrays, the top-level map is depth 1 */
#define PW_MAX_ELEMENTS 4096   /* msgpack objects (or JSON values) in one message */

/* ---- strings ------------------------------------------------------------------------- */
#define PW_MAX_PROMPT_BYTES 4096   /* prompt, negative_prompt, interpolate.prompt_to */
#define PW_MAX_ID_BYTES 64         /* id, job_id: [A-Za-z0-9._:-], not starting with '.' */
#define PW_MAX_KEY_BYTES 128       /* idempotency_key, webhook.secret_id */
#define PW_MAX_URL_BYTES 2048      /* every URL */
#define PW_MAX_PREFIX_BYTES 512    /* output.prefix */
#define PW_MAX_PATH_BYTES 1024     /* output.dir, result output key */
#define PW_MAX_MESSAGE_TEXT 1024   /* result error.message */

/* ---- image geometry ------------------------------------------------------------------ */
#define PW_SIZE_MIN 32
#define PW_SIZE_MAX 2048
#define PW_SIZE_MULTIPLE 32 /* VQGAN f4 -> token grid px/4, which the U-Net wants a multiple of 8 */
#define PW_OFFSET_MULTIPLE 4 /* outpaint offsets land on the token grid */
/* The largest side a worker generates unless started with --max-side; the scheduler refuses
 * bigger jobs at submission with the same number (its own --max-side, set to the fleet's). */
#define PW_DEFAULT_MAX_SIDE 1024

/* ---- sampler ------------------------------------------------------------------------- */
#define PW_BATCH_MAX 16
#define PW_STEPS_MAX 100
#define PW_CFG_MIN 0.0
#define PW_CFG_MAX 30.0
#define PW_TEMP_MIN 0.01 /* 0 would divide the logits by zero: use sampling "argmax" */
#define PW_TEMP_MAX 10.0
#define PW_PRIOR_STEPS_MAX 200
#define PW_PRIOR_GUIDANCE_MAX 20.0
#define PW_FRAMES_MIN 2
#define PW_FRAMES_MAX 64
#define PW_SEED_MAX 9007199254740991LL /* 2^53 - 1: survives a JavaScript JSON client */
#define PW_PRIORITY_MAX 9
#define PW_ATTEMPT_MAX 1000
#define PW_TIME_MAX 9007199254740991LL /* Unix milliseconds, same bound as the seed */
#define PW_MAX_OUTPUTS (PW_FRAMES_MAX > PW_BATCH_MAX ? PW_FRAMES_MAX : PW_BATCH_MAX)
#define PW_PROGRESS_TOTAL_MAX 100000
#define PW_TIMING_MAX_MS 86400000.0 /* one day */
#define PW_QUALITY_MIN 1 /* output_quality: JPEG and WebP */
#define PW_QUALITY_MAX 100
#define PW_PARAMS_MAX_BYTES 16384 /* an output's generation parameters (JSON text) */
/* Previews (preview_every): a decode of the current tokens every N denoising steps, at most
 * one per PW_PREVIEW_MIN_INTERVAL_MS per job, the longer side scaled down to
 * PW_PREVIEW_MAX_SIDE pixels. */
#define PW_PREVIEW_MIN_INTERVAL_MS 500
#define PW_PREVIEW_MAX_SIDE 64

/* ---- defaults (Paella v3 sampler) ---------------------------------------------------- */
#define PW_DEFAULT_SIZE 256
#define PW_DEFAULT_BATCH 1
#define PW_DEFAULT_STEPS 12
/* renoise_steps defaults to steps - 1 */
#define PW_DEFAULT_CFG 8.0
#define PW_DEFAULT_TEMP_START 0.7
#define PW_DEFAULT_TEMP_END 0.3
#define PW_DEFAULT_T_START 1.0
#define PW_DEFAULT_T_START_IMG2IMG 0.6 /* keeps the composition of the input image */
#define PW_DEFAULT_T_END 0.0
#define PW_DEFAULT_PRIOR_STEPS 60
#define PW_DEFAULT_PRIOR_GUIDANCE 4.0
#define PW_DEFAULT_FRAMES 8
#define PW_DEFAULT_PRIORITY 5
/* Bulk work yields to interactive jobs: a batch item without its own priority (in the item
 * or the batch's settings) gets this one, the lowest lane (worker/redis_keys.h). */
#define PW_BATCH_DEFAULT_PRIORITY 0
#define PW_DEFAULT_OUTPUT_QUALITY 90 /* output_format defaults to png (lossless) */
#define PW_DEFAULT_PREVIEW_EVERY 0   /* no previews */

#endif

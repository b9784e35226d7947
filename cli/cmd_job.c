/* `paella job encode|decode|validate`: the wire protocol from the shell. Input is stdin,
 * output stdout; failures print one JSON line {"code","field","message"} (stderr for
 * encode/decode, stdout for validate) and exit 1. Any bytes at all are safe input. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/opts.h"
#include "proto/proto.h"
#include "worker/kafka_topics.h"
#include "worker/queue_kafka.h"

typedef union {
  pw_job job;
  pw_progress progress;
  pw_result result;
} any_msg;

typedef struct {
  const char *action;
  int type; /* pw_msg_type, or -1 to take it from the message's "type" (default job) */
  int format; /* 1 JSON, 0 msgpack, -1 detect (validate only) */
  bool pretty;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: paella job <action> [--type job|progress|result] [--json|--msgpack] [--pretty]\n"
          "       paella job cancel --queue kafka://BROKERS?topic=T ID\n"
          "  encode    JSON on stdin -> msgpack on stdout\n"
          "  decode    msgpack on stdin -> JSON on stdout\n"
          "  validate  JSON or msgpack on stdin (detected); exit 0 when valid, else exit 1 and\n"
          "            print {\"code\":...,\"field\":...,\"message\":...}\n"
          "  cancel    --queue kafka://BROKERS?topic=T ID: asks the Kafka workers to cancel job ID\n"
          "            (a record on T" PA_KAFKA_CONTROL_SUFFIX "; the queue URL may also come from PAELLA_QUEUE)\n"
          "The message type defaults to the message's \"type\" field, else job.\n"
          "Fields, limits and error codes: docs/protocol.md\n");
}

static int read_fail(pw_error *err, pw_code code, const char *message) {
  err->code = code;
  err->field[0] = '\0';
  snprintf(err->message, sizeof err->message, "%s", message);
  return -1;
}

/* Reads all of stdin, refusing more than the largest message any format allows. */
static int read_stdin(uint8_t **out, size_t *len, pw_error *err) {
  size_t cap = 1 << 16, n = 0;
  uint8_t *buf = malloc(cap);
  if (!buf) return read_fail(err, PW_E_NO_MEMORY, "out of memory");
  for (;;) {
    if (n == cap) {
      uint8_t *grown = realloc(buf, cap * 2);
      if (!grown) break;
      buf = grown;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (n > PW_MAX_JSON_BYTES) {
      free(buf);
      return read_fail(err, PW_E_TOO_LARGE, "input is larger than any valid message");
    }
    if (got == 0) break;
  }
  if (n < cap && !ferror(stdin)) {
    *out = buf;
    *len = n;
    return 0;
  }
  free(buf);
  return read_fail(err, n == cap ? PW_E_NO_MEMORY : PW_E_IO, "cannot read stdin");
}

static int parse(int type, bool json, const uint8_t *buf, size_t n, any_msg *m, pw_error *err) {
  const char *text = (const char *)buf;
  switch (type) {
    case PW_MSG_PROGRESS:
      return json ? pw_progress_from_json(text, n, &m->progress, err) : pw_progress_decode(buf, n, &m->progress, err);
    case PW_MSG_RESULT:
      return json ? pw_result_from_json(text, n, &m->result, err) : pw_result_decode(buf, n, &m->result, err);
    default: return json ? pw_job_from_json(text, n, &m->job, err) : pw_job_decode(buf, n, &m->job, err);
  }
}

static int to_msgpack(int type, const any_msg *m, uint8_t **out, size_t *n, pw_error *err) {
  switch (type) {
    case PW_MSG_PROGRESS: return pw_progress_encode(&m->progress, out, n, err);
    case PW_MSG_RESULT: return pw_result_encode(&m->result, out, n, err);
    default: return pw_job_encode(&m->job, out, n, err);
  }
}

static int to_json(int type, const any_msg *m, int flags, char **out, pw_error *err) {
  switch (type) {
    case PW_MSG_PROGRESS: return pw_progress_to_json(&m->progress, flags, out, err);
    case PW_MSG_RESULT: return pw_result_to_json(&m->result, flags, out, err);
    default: return pw_job_to_json(&m->job, flags, out, err);
  }
}

static void release(int type, any_msg *m) {
  switch (type) {
    case PW_MSG_PROGRESS: pw_progress_free(&m->progress); break;
    case PW_MSG_RESULT: pw_result_free(&m->result); break;
    default: pw_job_free(&m->job); break;
  }
}

static void print_error(FILE *f, const pw_error *err) {
  char *line = pw_error_json(err);
  fprintf(f, "%s\n", line ? line : "{\"code\":\"no_memory\",\"field\":\"\",\"message\":\"out of memory\"}");
  free(line);
}

/* JSON text starts with printable ASCII or whitespace; a msgpack message is a map whose first
 * byte is 0x80-0x8f, 0xde or 0xdf. Other bytes go to msgpack, whose errors say more. */
static bool looks_like_msgpack(const uint8_t *buf, size_t n) {
  if (n == 0) return false;
  uint8_t b = buf[0];
  return b >= 0x80 || (b < 0x20 && b != ' ' && b != '\t' && b != '\n' && b != '\r');
}

static int write_output(const options *o, int type, const any_msg *m, pw_error *err) {
  if (!strcmp(o->action, "validate")) return 0;
  if (!strcmp(o->action, "encode")) {
    uint8_t *bytes = NULL;
    size_t n = 0;
    if (to_msgpack(type, m, &bytes, &n, err)) return -1;
    size_t wrote = fwrite(bytes, 1, n, stdout);
    free(bytes);
    return wrote == n ? 0 : -1;
  }
  char *text = NULL;
  if (to_json(type, m, o->pretty ? PW_JSON_PRETTY : 0, &text, err)) return -1;
  int rc = printf("%s\n", text) < 0 ? -1 : 0;
  free(text);
  return rc;
}

static int run(const options *o) {
  pw_error err = {0};
  uint8_t *buf = NULL;
  size_t n = 0;
  any_msg m;
  int type = o->type, rc = 1;
  FILE *errf = strcmp(o->action, "validate") ? stderr : stdout;
  memset(&m, 0, sizeof m);
  if (read_stdin(&buf, &n, &err)) goto fail;
  bool json = o->format >= 0 ? o->format == 1 : !looks_like_msgpack(buf, n);
  if (type < 0) {
    pw_msg_type peeked;
    int found = pw_peek_type(buf, n, json, &peeked, &err);
    if (found < 0) goto fail;
    type = found == 0 ? (int)peeked : PW_MSG_JOB;
  }
  if (parse(type, json, buf, n, &m, &err)) goto fail;
  if (write_output(o, type, &m, &err)) goto fail;
  rc = 0;
fail:
  if (rc) print_error(errf, &err);
  if (type >= 0) release(type, &m);
  free(buf);
  return rc;
}

static int parse_options(int argc, char **argv, options *o) {
  o->action = argv[1];
  o->type = -1;
  o->format = -1;
  o->pretty = false;
  if (strcmp(o->action, "encode") && strcmp(o->action, "decode") && strcmp(o->action, "validate"))
    return -1;
  if (!strcmp(o->action, "encode")) o->format = 1;
  if (!strcmp(o->action, "decode")) o->format = 0;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--type") && i + 1 < argc) {
      const char *t = argv[++i];
      o->type = !strcmp(t, "job") ? PW_MSG_JOB : !strcmp(t, "progress") ? PW_MSG_PROGRESS
              : !strcmp(t, "result") ? PW_MSG_RESULT : -2;
      if (o->type == -2) return -1;
    } else if (!strcmp(argv[i], "--json") && !strcmp(o->action, "validate")) {
      o->format = 1;
    } else if (!strcmp(argv[i], "--msgpack") && !strcmp(o->action, "validate")) {
      o->format = 0;
    } else if (!strcmp(argv[i], "--pretty") && !strcmp(o->action, "decode")) {
      o->pretty = true;
    } else {
      return -1;
    }
  }
  return 0;
}

/* `paella job cancel --queue kafka://... ID`. On Redis a cancel goes through the scheduler
 * (POST /v1/jobs/{id}/cancel), which owns the job records. */
static int cancel(int argc, char **argv) {
  const char *url = getenv("PAELLA_QUEUE"), *id = NULL;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--queue") && i + 1 < argc) url = argv[++i];
    else if (argv[i][0] != '-' && !id) id = argv[i];
    else return usage(stderr), CLI_EXIT_USAGE;
  }
  if (!url || !id) return usage(stderr), CLI_EXIT_USAGE;
  if (strncmp(url, "kafka://", 8)) {
    fprintf(stderr, "paella job cancel: --queue must be a kafka:// URL (on Redis, cancel through the scheduler)\n");
    return CLI_EXIT_USAGE;
  }
  if (pa_queue_kafka_cancel(url, id)) {
    fprintf(stderr, "paella job cancel: %s\n", pa_errmsg());
    return CLI_EXIT_FAILURE;
  }
  return CLI_EXIT_OK;
}

int cmd_job(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    usage(stdout);
    return 0;
  }
  if (argc >= 2 && !strcmp(argv[1], "cancel")) return cancel(argc, argv);
  options o;
  if (argc < 2 || parse_options(argc, argv, &o)) {
    usage(stderr);
    return 2;
  }
  return run(&o);
}

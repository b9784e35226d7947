/* `paella submit`: a job to a running scheduler (docs/api.md). The job options are
 * `paella generate`'s (cli/job_opts.h) plus the API's delivery fields; the body is checked
 * through proto before it is sent, so a bad value fails here with the option named, exactly
 * where the scheduler would refuse it. Exit status: 0 accepted, 1 refused or failed, 2 usage. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/job_opts.h"
#include "cli/opts.h"
#include "model/image.h"
#include "ops/error.h"

#define CMD "paella submit"

static void usage(FILE *f) {
  fprintf(f,
          "usage: paella submit [--url URL] [--api-key KEY] [--wait S] [--idempotency-key K]\n"
          "                     (JOB.json | - | [--prompt] TEXT [job options])\n"
          "\n"
          "Submits a job and prints the job resource. JOB.json (or - for stdin) is sent as it is;\n"
          "otherwise the options build it, with `paella generate`'s names, ranges and defaults (seed 0;\n"
          "with --image and no -W/-H, the image's size), so the same options give the same images:\n"
          "  --prompt TEXT, -n/--negative TEXT, -W/--width N, -H/--height N, --batch N, -s/--seed N\n"
          "  --steps N, --renoise-steps N, --cfg A[,B], --temp A[,B], --t-start T, --t-end T, --argmax\n"
          "  --prior-steps N, --prior-cfg F, --prior-sampler ddpm|ddim\n"
          "  --image FILE (img2img), --mask FILE (inpaint), --outpaint X,Y, --variation, --strength S\n"
          "  --interpolate TEXT --frames N [--slerp|--lerp], --format png|jpeg|webp, --quality N\n"
          "  --preview-every N      a preview every N denoising steps (paella wait --preview FILE)\n"
          "delivery (API only):\n"
          "  --output-dir DIR | --output-bucket B [--output-prefix P]   where the worker stores it\n"
          "  --webhook-url URL [--webhook-secret-id ID] [--webhook-events start,progress,completed,failed]\n"
          "  --priority 0.." "9" ", --deadline-ms UNIX_MS\n"
          "request:\n"
          "  --wait S               hold the request up to S seconds for the finished job\n"
          "  --idempotency-key K    a retry with the same key and body returns the same job\n"
          "Exit status: 0 accepted, 1 refused by the scheduler or unreachable, 2 bad command line.\n");
}

enum { S_PROMPT = 300, S_WAIT, S_IDEM, S_ODIR, S_OBUCKET, S_OPREFIX, S_WURL, S_WSECRET, S_WEVENTS, S_PRIORITY, S_DEADLINE, S_URL, S_KEY };

static const struct option own_opts[] = {
    {"prompt", required_argument, 0, S_PROMPT}, {"wait", required_argument, 0, S_WAIT},
    {"idempotency-key", required_argument, 0, S_IDEM}, {"output-dir", required_argument, 0, S_ODIR},
    {"output-bucket", required_argument, 0, S_OBUCKET}, {"output-prefix", required_argument, 0, S_OPREFIX},
    {"webhook-url", required_argument, 0, S_WURL}, {"webhook-secret-id", required_argument, 0, S_WSECRET},
    {"webhook-events", required_argument, 0, S_WEVENTS}, {"priority", required_argument, 0, S_PRIORITY},
    {"deadline-ms", required_argument, 0, S_DEADLINE}, {"url", required_argument, 0, S_URL},
    {"api-key", required_argument, 0, S_KEY}};

typedef struct {
  cli_job cj;
  client c;
  const char *file, *idem;
  int64_t wait_s;
  int job_options; /* how many options set job fields (not allowed with JOB.json) */
} submit_opts;

static int set_str(char **dst, const char *v) {
  free(*dst);
  *dst = strdup(v);
  return *dst ? 0 : cli_usage_error(CMD, NULL, "out of memory");
}

static int webhook_events(pw_job *j, const char *opt, const char *v) {
  char buf[256];
  unsigned mask = 0;
  snprintf(buf, sizeof buf, "%s", v);
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    int e = -1;
    for (int i = 0; i < PW_EVENT_COUNT; i++)
      if (!strcmp(t, pw_event_name((pw_event)i))) e = i;
    if (e < 0) return cli_usage_error(CMD, opt, "'%s' is not one of start, progress, completed, failed", t);
    mask |= 1u << e;
  }
  j->webhook.events = mask;
  return 0;
}

static int own_option(submit_opts *s, int c, const char *opt, const char *v) {
  pw_job *j = &s->cj.job;
  s->job_options++;
  switch (c) {
    case S_PROMPT: return set_str(&j->prompt, v);
    case S_ODIR: j->has_output = 1; return set_str(&j->output.dir, v);
    case S_OBUCKET: j->has_output = 1; return set_str(&j->output.bucket, v);
    case S_OPREFIX: j->has_output = 1; return set_str(&j->output.prefix, v);
    case S_WURL: j->has_webhook = 1; return set_str(&j->webhook.url, v);
    case S_WSECRET: j->has_webhook = 1; return set_str(&j->webhook.secret_id, v);
    case S_WEVENTS: j->has_webhook = 1; return webhook_events(j, opt, v);
    case S_PRIORITY: return cli_opt_int(CMD, opt, v, 0, PW_PRIORITY_MAX, &j->priority);
    case S_DEADLINE: return cli_opt_int(CMD, opt, v, 0, PW_TIME_MAX, &j->deadline_ms);
  }
  s->job_options--;
  switch (c) {
    case S_WAIT: return cli_opt_int(CMD, opt, v, 0, 3600, &s->wait_s);
    case S_IDEM: s->idem = v; return 0;
    case S_URL: s->c.url = v; return 0;
    case S_KEY: s->c.key = v; return 0;
  }
  return -1;
}

static bool is_json_name(const char *s) {
  size_t n = strlen(s);
  return n > 5 && !strcmp(s + n - 5, ".json");
}

/* Submit's own options and positional argument (the job file, or the prompt). */
static int submit_option(void *user, int c, const char *opt, const char *v) {
  submit_opts *s = user;
  if (c == 1) {
    if (s->file || s->cj.job.prompt) return cli_usage_error(CMD, NULL, "unexpected argument '%s' (see --help)", v);
    if (!strcmp(v, "-") || is_json_name(v)) s->file = v;
    else return set_str(&s->cj.job.prompt, v);
    return 0;
  }
  int rc = own_option(s, c, opt, v);
  if (rc == -1) s->job_options++; /* a job option: not allowed with JOB.json */
  return rc;
}

static int parse_args(int argc, char **argv, submit_opts *s) {
  int rc = cli_job_parse(CMD, argc, argv, "-", own_opts, (int)(sizeof own_opts / sizeof own_opts[0]), submit_option, s,
                         &s->cj);
  if (rc) return rc;
  if (s->file && (s->job_options || s->cj.job.prompt)) return cli_usage_error(CMD, NULL, "give JOB.json or job options, not both");
  if (!s->file && !s->cj.job.prompt && !s->cj.image_path)
    return cli_usage_error(CMD, NULL, "nothing to submit: give a prompt (--prompt TEXT) or JOB.json (see --help)");
  return s->file ? 0 : cli_job_finish(CMD, &s->cj, NULL);
}

/* The validated job as the API's JSON body: no id (the scheduler assigns it) and no attempt. */
static char *job_body(const pw_job *j) {
  char *text = NULL;
  pw_error err;
  if (pw_job_to_json(j, 0, &text, &err)) {
    cli_usage_error(CMD, cli_job_option_of_field(err.field), "%s", err.message);
    return NULL;
  }
  json_t *o = json_loads(text, 0, NULL);
  free(text);
  json_object_del(o, "id");
  json_object_del(o, "attempt");
  text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
  json_decref(o);
  return text;
}

/* A JOB.json file is checked through proto with a placeholder id before it is sent. */
static int check_file(const char *body, size_t len) {
  json_t *j = json_loadb(body, len, 0, NULL);
  if (!json_is_object(j)) {
    json_decref(j);
    return 0; /* let the scheduler report the syntax error */
  }
  if (!json_object_get(j, "id")) json_object_set_new(j, "id", json_string("local-check"));
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  int bad = text && pw_job_from_json(text, strlen(text), &job, &err);
  if (bad) cli_usage_error(CMD, err.field[0] ? err.field : NULL, "%s: %s", pw_code_name(err.code), err.message);
  pw_job_free(&job);
  free(text);
  return bad ? CLI_EXIT_USAGE : 0;
}

static int send_job(const submit_opts *s, const char *body, size_t len) {
  char prefer[64], idem[300];
  const char *headers[3] = {0};
  int n = 0;
  if (s->wait_s) headers[n++] = (snprintf(prefer, sizeof prefer, "Prefer: wait=%lld", (long long)s->wait_s), prefer);
  if (s->idem) headers[n++] = (snprintf(idem, sizeof idem, "Idempotency-Key: %s", s->idem), idem);
  json_t *j = NULL;
  long st = client_request(&s->c, "POST", "/v1/jobs", "application/json", body, len, headers, &j);
  int rc = st == 200 || st == 202 ? (client_print_json(j), CLI_EXIT_OK) : st < 0 ? CLI_EXIT_FAILURE : client_api_failed(st, j);
  json_decref(j);
  return rc;
}

/* As `paella generate` does: without -W/-H an input image gives the size (rounded down to
 * PW_SIZE_MULTIPLE); outpainting and variations keep the job's. */
static int size_from_image(cli_job *cj) {
  pw_job *j = &cj->job;
  if (!j->image.present || !j->image.data || cj->size_given || j->kind == PW_KIND_OUTPAINT || j->kind == PW_KIND_VARIATION)
    return CLI_EXIT_OK;
  pa_image *raw = NULL;
  if (pa_image_decode(j->image.data, j->image.len, &raw)) {
    fprintf(stderr, CMD ": %s: %s\n", cj->image_path, pa_errmsg());
    return CLI_EXIT_FAILURE;
  }
  j->width = raw->width / PW_SIZE_MULTIPLE * PW_SIZE_MULTIPLE;
  j->height = raw->height / PW_SIZE_MULTIPLE * PW_SIZE_MULTIPLE;
  int w = raw->width, h = raw->height;
  pa_image_free(raw);
  if (!j->width || !j->height) {
    fprintf(stderr, CMD ": --image: %dx%d is smaller than %d pixels\n", w, h, PW_SIZE_MULTIPLE);
    return CLI_EXIT_USAGE;
  }
  return CLI_EXIT_OK;
}

int cmd_submit(int argc, char **argv) {
  if (client_is_help(argc, argv)) return usage(stdout), CLI_EXIT_OK;
  submit_opts s = {0};
  cli_job_init(&s.cj);
  client_init(&s.c);
  char *body = NULL;
  size_t len = 0;
  int rc = parse_args(argc, argv, &s);
  if (rc) goto done;
  if (s.file) {
    if (!(body = client_read_all(s.file, &len))) {
      fprintf(stderr, CMD ": cannot read %s\n", s.file);
      rc = CLI_EXIT_FAILURE;
      goto done;
    }
    if ((rc = check_file(body, len))) goto done;
  } else if ((rc = size_from_image(&s.cj))) {
    goto done;
  } else if (!(body = job_body(&s.cj.job))) {
    rc = CLI_EXIT_USAGE;
    goto done;
  } else {
    len = strlen(body);
  }
  rc = send_job(&s, body, len);
done:
  free(body);
  cli_job_free(&s.cj);
  return rc;
}

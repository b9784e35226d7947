/* `paella status | wait | fetch | batch`: following jobs and batches on a running scheduler
 * (docs/api.md). Every subcommand takes --url / --api-key and --help; an unknown option is a
 * usage error (exit 2); an API error prints "paella: HTTP 404 not_found: no job X" (exit 1). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "cli/output.h"
#include "ops/error.h"

/* The options a subcommand knows: name, whether it takes a value, where it goes. */
typedef struct {
  const char *name;
  const char **value; /* NULL: a flag */
  bool *flag;
} opt_spec;

/* --url/--api-key, the listed options and up to `max_pos` positional arguments. */
static int parse(const char *cmd, int argc, char **argv, client *c, const opt_spec *specs, const char **pos,
                 int max_pos, int *n_pos) {
  client_init(c);
  *n_pos = 0;
  for (int i = 1; i < argc; i++) {
    int rc = client_option(c, argc, argv, &i);
    if (rc == CLI_EXIT_USAGE) return rc;
    if (rc) continue;
    const opt_spec *s = specs;
    while (s && s->name && strcmp(s->name, argv[i])) s++;
    if (s && s->name) {
      if (s->flag) *s->flag = true;
      else if (i + 1 < argc) *s->value = argv[++i];
      else return cli_usage_error(cmd, argv[i], "missing value");
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return cli_usage_error(cmd, argv[i], "unknown option (see --help)");
    } else if (*n_pos < max_pos) {
      pos[(*n_pos)++] = argv[i];
    } else {
      return cli_usage_error(cmd, NULL, "unexpected argument '%s' (see --help)", argv[i]);
    }
  }
  return 0;
}

static bool is_final(const char *s) {
  return s && (!strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "canceled"));
}

/* GET path; prints API errors. *out the reply on 200. */
static int get_json(const client *c, const char *path, json_t **out) {
  long st = client_request(c, "GET", path, NULL, NULL, 0, NULL, out);
  if (st == 200) return 0;
  int rc = st < 0 ? CLI_EXIT_FAILURE : client_api_failed(st, *out);
  json_decref(*out);
  *out = NULL;
  return rc;
}

/* ---- status / wait ------------------------------------------------------------------ */

int cmd_status(int argc, char **argv) {
  const char *usage = "usage: paella status [--url URL] [--api-key KEY] JOB_ID\n";
  if (client_is_help(argc, argv)) return fputs(usage, stdout), CLI_EXIT_OK;
  client c;
  const char *id = NULL;
  char path[256];
  int n, rc = parse("paella status", argc, argv, &c, NULL, &id, 1, &n);
  if (rc || n != 1) return rc ? rc : (fputs(usage, stderr), CLI_EXIT_USAGE);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  json_t *j = NULL;
  if ((rc = get_json(&c, path, &j)) == 0) client_print_json(j);
  json_decref(j);
  return rc;
}

/* A newer preview than the last one written (`*last_step`) goes to `dest` (atomically,
 * through cli_output_write); a failed download is reported and the wait goes on. */
static void update_preview(const client *c, const char *id, const json_t *job, const char *dest, json_int_t *last_step) {
  json_int_t step = json_integer_value(json_object_get(json_object_get(job, "preview"), "step"));
  if (!dest || step <= 0 || step == *last_step) return;
  char path[256];
  snprintf(path, sizeof path, "/v1/jobs/%s/preview", id);
  long st = client_download(c, path, dest);
  if (st == 200) *last_step = step;
  else if (st > 0) fprintf(stderr, "paella wait: %s: HTTP %ld\n", path, st);
}

/* Polls until the job is final; *out the final resource. `preview`: a file that each new
 * preview of the job replaces (NULL: none). */
static int wait_final(const client *c, const char *id, int64_t timeout_s, const char *preview, json_t **out) {
  char path[256];
  json_int_t preview_step = 0;
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  for (int64_t waited = 0;; waited++) {
    int rc = get_json(c, path, out);
    if (rc) return rc;
    update_preview(c, id, *out, preview, &preview_step);
    if (is_final(json_string_value(json_object_get(*out, "status")))) return 0;
    json_decref(*out);
    *out = NULL;
    if (waited >= timeout_s * 2) {
      fprintf(stderr, "paella: job %s did not finish within %lld s\n", id, (long long)timeout_s);
      return CLI_EXIT_FAILURE;
    }
    usleep(500000);
  }
}

int cmd_wait(int argc, char **argv) {
  const char *usage = "usage: paella wait [--url URL] [--api-key KEY] [--timeout S] [--preview FILE] JOB_ID\n"
                      "  exit 0 when it succeeded; --preview: FILE is replaced by each new preview of a job\n"
                      "  submitted with --preview-every N (a PNG, 64 px on its longer side)\n";
  if (client_is_help(argc, argv)) return fputs(usage, stdout), CLI_EXIT_OK;
  client c;
  const char *id = NULL, *timeout = "600", *preview = NULL;
  int64_t timeout_s;
  opt_spec specs[] = {{"--timeout", &timeout, NULL}, {"--preview", &preview, NULL}, {0}};
  int n, rc = parse("paella wait", argc, argv, &c, specs, &id, 1, &n);
  if (rc || n != 1) return rc ? rc : (fputs(usage, stderr), CLI_EXIT_USAGE);
  if ((rc = cli_opt_int("paella wait", "--timeout", timeout, 0, 86400, &timeout_s))) return rc;
  if (preview && !strcmp(preview, "-")) return cli_usage_error("paella wait", "--preview", "needs a file, not -");
  if (preview && cli_output_check(preview)) {
    fprintf(stderr, "paella wait: %s\n", pa_errmsg());
    return CLI_EXIT_FAILURE;
  }
  json_t *j = NULL;
  if ((rc = wait_final(&c, id, timeout_s, preview, &j)) == 0) {
    client_print_json(j);
    rc = strcmp(json_string_value(json_object_get(j, "status")), "succeeded") ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
  }
  json_decref(j);
  return rc;
}

/* ---- fetch -------------------------------------------------------------------------- */

/* Output n of a finished job into dir, named after its key's last component. */
static int fetch_output(const client *c, const char *id, size_t n, const json_t *output, const char *dir) {
  const char *key = json_string_value(json_object_get(output, "key"));
  const char *base = key && strrchr(key, '/') ? strrchr(key, '/') + 1 : key;
  char path[512], dest[4200];
  if (!base || !*base || !strcmp(base, "..") || !strcmp(base, ".")) {
    fprintf(stderr, "paella fetch: output %zu of %s has no usable name\n", n, id);
    return CLI_EXIT_FAILURE;
  }
  snprintf(path, sizeof path, "/v1/jobs/%s/outputs/%zu", id, n);
  snprintf(dest, sizeof dest, "%s/%s", dir, base);
  long st = client_download(c, path, dest);
  if (st == 200) {
    printf("%s\n", dest);
    return CLI_EXIT_OK;
  }
  if (st > 0) fprintf(stderr, "paella fetch: %s: HTTP %ld\n", path, st);
  return CLI_EXIT_FAILURE;
}

int cmd_fetch(int argc, char **argv) {
  const char *usage = "usage: paella fetch [--url URL] [--api-key KEY] [--wait S] JOB_ID -o DIR\n"
                      "Downloads a finished job's outputs into DIR (printed one per line).\n";
  if (client_is_help(argc, argv)) return fputs(usage, stdout), CLI_EXIT_OK;
  client c;
  const char *id = NULL, *dir = NULL, *wait = "0";
  int64_t wait_s;
  opt_spec specs[] = {{"-o", &dir, NULL}, {"--output", &dir, NULL}, {"--wait", &wait, NULL}, {0}};
  int n, rc = parse("paella fetch", argc, argv, &c, specs, &id, 1, &n);
  if (rc || n != 1 || !dir) return rc ? rc : (fputs(usage, stderr), CLI_EXIT_USAGE);
  if ((rc = cli_opt_int("paella fetch", "--wait", wait, 0, 86400, &wait_s))) return rc;
  json_t *j = NULL;
  if ((rc = wait_final(&c, id, wait_s, NULL, &j))) return rc;
  const char *status = json_string_value(json_object_get(j, "status"));
  json_t *outputs = json_object_get(json_object_get(j, "result"), "outputs");
  if (strcmp(status, "succeeded")) {
    fprintf(stderr, "paella fetch: job %s %s; it has no outputs\n", id, status);
    rc = CLI_EXIT_FAILURE;
  }
  for (size_t i = 0; !rc && i < json_array_size(outputs); i++) rc = fetch_output(&c, id, i, json_array_get(outputs, i), dir);
  json_decref(j);
  return rc;
}

/* ---- batch -------------------------------------------------------------------------- */

static void progress_bar(const json_t *b) {
  long long total = json_integer_value(json_object_get(b, "total"));
  long long done = total - json_integer_value(json_object_get(b, "pending"));
  int width = 40, filled = total ? (int)(done * width / total) : width;
  json_t *eta = json_object_get(b, "eta_seconds");
  fprintf(stderr, "\r[%.*s%*s] %lld/%lld", filled, "########################################", width - filled, "", done, total);
  if (json_is_number(eta)) fprintf(stderr, "  eta %.0f s   ", json_number_value(eta));
  fflush(stderr);
}

static int batch_follow(const client *c, const char *id, bool follow) {
  char path[256];
  snprintf(path, sizeof path, "/v1/batches/%s", id);
  for (;;) {
    json_t *j = NULL;
    int rc = get_json(c, path, &j);
    if (rc) return rc;
    const char *status = json_string_value(json_object_get(j, "status"));
    bool done = status && !strcmp(status, "completed");
    if (follow) progress_bar(j);
    if (done || !follow) {
      if (follow) fputc('\n', stderr);
      client_print_json(j);
      json_decref(j);
      return CLI_EXIT_OK;
    }
    json_decref(j);
    usleep(500000);
  }
}

/* The JSONL body: a head line with the settings, then the items file as it is. */
static char *batch_body(const char *settings, const char *name, const char *shard, const char *items, size_t len,
                        size_t *body_len) {
  json_t *head = json_object();
  if (settings) json_object_set_new(head, "settings", json_loads(settings, 0, NULL));
  if (name) json_object_set_new(head, "name", json_string(name));
  if (shard) json_object_set_new(head, "shard_size", json_integer(atoi(shard)));
  char *h = json_dumps(head, JSON_COMPACT);
  json_decref(head);
  size_t hl = h ? strlen(h) : 0;
  char *body = h ? malloc(hl + len + 2) : NULL;
  if (body) {
    memcpy(body, h, hl);
    body[hl] = '\n';
    memcpy(body + hl + 1, items, len);
    *body_len = hl + 1 + len;
  }
  free(h);
  return body;
}

static const char batch_usage[] =
    "usage: paella batch submit [--url URL] [--api-key KEY] [--settings JSON] [--name N] [--shard-size N]\n"
    "                           [--no-wait] PROMPTS.jsonl      (a progress bar until it completes)\n"
    "       paella batch status [--url URL] [--api-key KEY] [--follow] BATCH_ID\n";

static int batch_submit(int argc, char **argv) {
  client c;
  const char *file = NULL, *settings = NULL, *name = NULL, *shard = NULL;
  bool no_wait = false;
  opt_spec specs[] = {{"--settings", &settings, NULL}, {"--name", &name, NULL}, {"--shard-size", &shard, NULL},
                      {"--no-wait", NULL, &no_wait}, {0}};
  int n, rc = parse("paella batch submit", argc, argv, &c, specs, &file, 1, &n);
  if (rc || n != 1) return rc ? rc : (fputs(batch_usage, stderr), CLI_EXIT_USAGE);
  if (settings && !json_is_object(json_loads(settings, 0, NULL)))
    return cli_usage_error("paella batch submit", "--settings", "not a JSON object");
  size_t len = 0, body_len = 0;
  char *items = client_read_all(file, &len), *body = items ? batch_body(settings, name, shard, items, len, &body_len) : NULL;
  free(items);
  if (!body) return fprintf(stderr, "paella batch submit: cannot read %s\n", file), CLI_EXIT_FAILURE;
  json_t *j = NULL;
  long st = client_request(&c, "POST", "/v1/batches", "application/x-ndjson", body, body_len, NULL, &j);
  free(body);
  rc = st == 202 || st == 200 ? CLI_EXIT_OK : st < 0 ? CLI_EXIT_FAILURE : client_api_failed(st, j);
  char id[160];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")) ? json_string_value(json_object_get(j, "id")) : "");
  json_decref(j);
  return rc ? rc : batch_follow(&c, id, !no_wait);
}

int cmd_batch(int argc, char **argv) {
  if (argc < 2 || client_is_help(argc, argv)) {
    fputs(batch_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
  }
  if (!strcmp(argv[1], "submit")) return batch_submit(argc - 1, argv + 1);
  if (strcmp(argv[1], "status")) return cli_usage_error("paella batch", NULL, "unknown subcommand '%s' (submit, status)", argv[1]);
  client c;
  const char *id = NULL;
  bool follow = false;
  opt_spec specs[] = {{"--follow", NULL, &follow}, {0}};
  int n, rc = parse("paella batch status", argc - 1, argv + 1, &c, specs, &id, 1, &n);
  if (rc || n != 1) return rc ? rc : (fputs(batch_usage, stderr), CLI_EXIT_USAGE);
  return batch_follow(&c, id, follow);
}

/* `paella submit | status | wait | fetch | batch` as a user runs them against a real
 * scheduler (in this process), redis-server and paella-worker: every job option reaches the
 * API, --wait survives --idempotency-key, errors are one readable line with the right exit
 * status, fetched outputs are the job's images with their parameters embedded, and the same
 * settings and seed give the same bytes through `paella generate` and through the worker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/scheduler/harness.h"

static int port;

/* Runs `paella ARGS` with PAELLA_URL set; stdout and stderr into files of h_dir. */
static int paella(const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "PAELLA_URL=http://127.0.0.1:%d OMP_NUM_THREADS=1 %s/paella %s >%s/out 2>%s/err", port,
           PAELLA_BINARY_DIR, args, h_dir, h_dir);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *name, size_t *len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", name[0] == '/' ? "" : h_dir, name);
  FILE *f = fopen(path[0] == '/' && path[1] == '/' ? path + 1 : path, "rb");
  if (!f) return calloc(1, 1);
  char *buf = malloc(1 << 24);
  size_t n = fread(buf, 1, (1 << 24) - 1, f);
  fclose(f);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

static bool file_has(const char *name, const char *text) {
  char *s = slurp(name, NULL);
  bool found = strstr(s, text) != NULL;
  if (!found) fprintf(stderr, "  %s lacks \"%s\": %s\n", name, text, s);
  free(s);
  return found;
}

/* The "id" of the JSON that the last command printed. */
static void printed_id(char *id, size_t cap) {
  char *s = slurp("out", NULL);
  json_t *j = json_loads(s, 0, NULL);
  snprintf(id, cap, "%s", json_string_value(json_object_get(j, "id")) ? json_string_value(json_object_get(j, "id")) : "");
  json_decref(j);
  free(s);
}

static void submit_wait_fetch(void) {
  char args[1024], id[128];
  const char *settings = "-W 64 -H 64 --steps 3 --prior-steps 2 --seed 5 --cfg 6 --temp 0.9,0.2";
  /* --negative after --prompt used to exit 2 silently; --idempotency-key used to drop --wait */
  snprintf(args, sizeof args, "submit --prompt 'a fox' --negative 'blurry' %s --format webp --quality 80 --wait 120 "
                              "--idempotency-key k-1", settings);
  CHECK_MSG(paella(args) == 0, "submit: %s", slurp("err", NULL));
  CHECK(file_has("out", "\"status\": \"succeeded\""));
  printed_id(id, sizeof id);
  CHECK(id[0]);
  /* the same key and body: the same job */
  CHECK(paella(args) == 0);
  char again[128];
  printed_id(again, sizeof again);
  CHECK_MSG(!strcmp(id, again), "%s vs %s", id, again);

  snprintf(args, sizeof args, "fetch %s -o %s/fetched", id, h_dir);
  char dir[512];
  snprintf(dir, sizeof dir, "%s/fetched", h_dir);
  mkdir(dir, 0755);
  CHECK_MSG(paella(args) == 0, "fetch: %s", slurp("err", NULL));
  CHECK(file_has("out", "/fetched/0.webp"));
  char fetched[600];
  snprintf(fetched, sizeof fetched, "info %s/fetched/0.webp", h_dir);
  CHECK(paella(fetched) == 0 && file_has("out", "\"seed\":5") && file_has("out", "\"negative_prompt\":\"blurry\"") &&
        file_has("out", "\"output_quality\":80"));

  /* the same settings and seed through `paella generate`: the same bytes, parameters included */
  snprintf(args, sizeof args, "generate 'a fox' --negative blurry %s --quality 80 -q -o %s/local.webp", settings, h_dir);
  CHECK_MSG(paella(args) == 0, "generate: %s", slurp("err", NULL));
  size_t a_len = 0, b_len = 0;
  char pa[600], pb[600];
  snprintf(pa, sizeof pa, "%s/fetched/0.webp", h_dir);
  snprintf(pb, sizeof pb, "%s/local.webp", h_dir);
  char *a = slurp(pa, &a_len), *b = slurp(pb, &b_len);
  CHECK_MSG(a_len > 100 && a_len == b_len && !memcmp(a, b, a_len), "worker %zu bytes vs CLI %zu bytes differ", a_len, b_len);
  free(b);

  /* JPEG and WebP inputs reach the worker and decode there (img2img from the WebP, inpainting
   * with a JPEG mask) */
  snprintf(args, sizeof args, "generate 'a mask' -W 64 -H 64 --steps 2 --prior-steps 1 -q -o %s/mask.jpg", h_dir);
  CHECK(paella(args) == 0);
  snprintf(args, sizeof args, "submit --prompt 'a fox' --image %s/fetched/0.webp --mask %s/mask.jpg --steps 2 "
                              "--prior-steps 1 --wait 120", h_dir, h_dir);
  CHECK_MSG(paella(args) == 0, "inpaint from WebP + JPEG: %s", slurp("err", NULL));
  CHECK(file_has("out", "\"status\": \"succeeded\""));

  /* the embedded parameters regenerate the image: paella info -> paella submit -> the same bytes */
  snprintf(args, sizeof args, "info %s/fetched/0.webp >%s/job.json && PAELLA_URL=http://127.0.0.1:%d %s/paella submit "
                              "%s/job.json --wait 120", h_dir, h_dir, port, PAELLA_BINARY_DIR, h_dir);
  CHECK_MSG(paella(args) == 0, "regenerate: %s", slurp("err", NULL));
  CHECK(file_has("out", "\"status\": \"succeeded\""));
  printed_id(again, sizeof again);
  snprintf(args, sizeof args, "fetch %s -o %s/regen", again, h_dir);
  snprintf(dir, sizeof dir, "%s/regen", h_dir);
  mkdir(dir, 0755);
  CHECK_MSG(paella(args) == 0, "fetch: %s", slurp("err", NULL));
  snprintf(pb, sizeof pb, "%s/regen/0.webp", h_dir);
  b = slurp(pb, &b_len);
  CHECK_MSG(a_len == b_len && !memcmp(a, b, a_len), "regenerated %zu bytes vs %zu", b_len, a_len);
  free(a);
  free(b);
}

static void errors_and_help(void) {
  CHECK(paella("status j-nope") == 1);
  CHECK(file_has("err", "paella: HTTP 404 not_found: no job j-nope"));
  CHECK(paella("fetch j-nope -o /tmp") == 1 && file_has("err", "HTTP 404 not_found: no job j-nope"));
  CHECK(paella("batch status --help") == 0 && file_has("out", "usage: paella batch"));
  CHECK(paella("submit --help") == 0 && file_has("out", "--webhook-url"));
  CHECK(paella("fetch --help") == 0 && paella("status --help") == 0 && paella("wait --help") == 0);
  CHECK(paella("submit --prompt x --steps 101") == 2 && file_has("err", "paella submit: --steps: 101 is out of range 1..100"));
  CHECK(paella("submit --prompt x --bogus") == 2 && file_has("err", "--bogus: unknown option"));
  CHECK(paella("submit") == 2 && file_has("err", "nothing to submit"));
  CHECK(paella("submit --prompt x --webhook-url http://127.0.0.1:9/h --webhook-events start,nope") == 2 &&
        file_has("err", "'nope' is not one of"));
  CHECK(paella("status --url http://127.0.0.1:1 j-1") == 1);
  CHECK(paella("--version") == 0 && file_has("out", "paella ") && file_has("out", "commit ") && file_has("out", "CUDA "));
  /* every job field the API takes: a webhook, an output dir, priority, deadline */
  char args[1024];
  snprintf(args, sizeof args, "submit --prompt 'a boat' -W 32 -H 32 --steps 2 --prior-steps 1 --priority 7 "
                              "--deadline-ms 9007199254740991 --output-dir %s/mine --wait 120", h_dir);
  CHECK_MSG(paella(args) == 0, "%s", slurp("err", NULL));
  /* the output is named inside its directory, not by the server's path */
  CHECK(file_has("out", "\"succeeded\"") && file_has("out", "/0.png") && !file_has("out", h_dir));
}

int main(void) {
  sched_config c;
  sched_tracker *t;
  sched_server *s;
  CHECK(harness_start_stack(&c, &t, &s, NULL) == 0);
  if (s && t) {
    port = sched_server_port(s);
    errors_and_help();
    submit_wait_fetch();
  }
  harness_stop_stack(t, s);
  TEST_END();
}

/* `paella submit | status | wait | fetch | batch` as a user runs them against a real
 * scheduler (in this process), redis-server and paella-worker: every job option reaches the
 * API, --wait survives --idempotency-key, errors are one readable line with the right exit
 * status, fetched outputs are the job's images with their parameters embedded, and the same
 * settings and seed give the same bytes through `paella generate` and through the worker. */
#include <pthread.h>
#include <signal.h>
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
  free(b);

  /* the job's record carries each output's parameters exactly as its image embeds them
   * (weights' checksums included), and they regenerate the same bytes */
  snprintf(args, sizeof args, "status %s", id);
  CHECK(paella(args) == 0);
  char *status = slurp("out", NULL);
  json_t *st = json_loads(status, 0, NULL);
  const char *params = json_string_value(json_object_get(json_array_get(json_object_get(json_object_get(st, "result"),
                                                                                          "outputs"), 0), "params"));
  CHECK_MSG(params && strstr(params, "\"models\":{\"byt5\":\""), "record: %s", status);
  CHECK(paella(fetched) == 0);
  char *embedded = slurp("out", NULL);
  size_t n = strlen(embedded);
  if (n && embedded[n - 1] == '\n') embedded[n - 1] = 0;
  CHECK_MSG(params && !strcmp(params, embedded), "record params %s vs embedded %s", params ? params : "-", embedded);
  snprintf(pb, sizeof pb, "%s/record.json", h_dir);
  FILE *f = fopen(pb, "w");
  if (f && params) fputs(params, f);
  if (f) fclose(f);
  snprintf(args, sizeof args, "submit %s --wait 120", pb);
  CHECK_MSG(paella(args) == 0 && file_has("out", "\"status\": \"succeeded\""), "from the record: %s", slurp("err", NULL));
  printed_id(again, sizeof again);
  snprintf(args, sizeof args, "fetch %s -o %s/fromrecord", again, h_dir);
  snprintf(dir, sizeof dir, "%s/fromrecord", h_dir);
  mkdir(dir, 0755);
  CHECK_MSG(paella(args) == 0, "fetch: %s", slurp("err", NULL));
  snprintf(pb, sizeof pb, "%s/fromrecord/0.webp", h_dir);
  b = slurp(pb, &b_len);
  CHECK_MSG(a_len == b_len && !memcmp(a, b, a_len), "regenerated from the record: %zu bytes vs %zu", b_len, a_len);
  json_decref(st);
  free(status);
  free(embedded);
  free(a);
  free(b);
}

/* An SSE stream read to its end (the job's final status) in a thread of its own. */
typedef struct {
  char path[128];
  h_resp r;
  int rc;
} sse_reader;

static void *read_sse(void *arg) {
  sse_reader *s = arg;
  s->rc = h_http(port, "GET", s->path, NULL, NULL, 0, 300, &s->r);
  return NULL;
}

static void submit_json(const char *body, char *id, size_t cap) {
  h_resp r;
  id[0] = 0;
  if (h_http(port, "POST", "/v1/jobs", "Content-Type: application/json\r\n", body, strlen(body), 30, &r) == 0 &&
      h_str(r.json, "id"))
    snprintf(id, cap, "%s", h_str(r.json, "id"));
  CHECK_MSG(id[0], "submit %s: %d %s", body, r.status, r.body ? r.body : "");
  h_resp_free(&r);
}

/* Width and height of a PNG file from its IHDR; false when it is not a PNG. */
static bool png_size(const char *path, int *w, int *h) {
  unsigned char b[24];
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(b, 1, sizeof b, f) : 0;
  if (f) fclose(f);
  if (n < 24 || memcmp(b, "\x89PNG\r\n\x1a\n", 8) || memcmp(b + 12, "IHDR", 4)) return false;
  *w = b[16] << 24 | b[17] << 16 | b[18] << 8 | b[19];
  *h = b[20] << 24 | b[21] << 16 | b[22] << 8 | b[23];
  return true;
}

/* preview_every=1: the job's event stream carries `preview` events naming a stored PNG, and
 * its status the latest one; the same job without preview_every: no preview event. The
 * worker is stopped while both streams connect, so that no event can pass before them. */
static void preview_events(void) {
  char with[64], without[64];
  CHECK(kill(h_worker_pid, SIGSTOP) == 0);
  submit_json("{\"prompt\":\"a lighthouse\",\"width\":64,\"height\":64,\"steps\":6,\"prior\":{\"steps\":2},"
              "\"seed\":3,\"preview_every\":1}", with, sizeof with);
  submit_json("{\"prompt\":\"a lighthouse\",\"width\":64,\"height\":64,\"steps\":6,\"prior\":{\"steps\":2},"
              "\"seed\":3}", without, sizeof without);
  sse_reader rd[2] = {0};
  pthread_t th[2];
  snprintf(rd[0].path, sizeof rd[0].path, "/v1/jobs/%s/events", with);
  snprintf(rd[1].path, sizeof rd[1].path, "/v1/jobs/%s/events", without);
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, read_sse, &rd[i]);
  usleep(1500000); /* both streams open and past their first status event */
  CHECK(kill(h_worker_pid, SIGCONT) == 0);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  const char *a = rd[0].r.body ? rd[0].r.body : "", *b = rd[1].r.body ? rd[1].r.body : "";
  char want[160]; /* the key from the store's root, never a server path */
  snprintf(want, sizeof want, "\"preview\":\"%s/preview.png\"", with);
  CHECK_MSG(rd[0].rc == 0 && strstr(a, "event: preview\n") && strstr(a, want) && !strstr(a, "file://"), "stream: %s", a);
  CHECK_MSG(strstr(a, "\"status\":\"succeeded\""), "stream: %s", a);
  CHECK_MSG(rd[1].rc == 0 && strstr(b, "event: progress") && strstr(b, "\"status\":\"succeeded\""), "stream: %s", b);
  CHECK_MSG(!strstr(b, "event: preview") && !strstr(b, "\"preview\""), "a preview without preview_every: %s", b);
  /* the status keeps the latest preview; the file is a PNG of the job's size (64 px: not scaled) */
  h_resp r;
  char path[160];
  snprintf(path, sizeof path, "/v1/jobs/%s", with);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200);
  const char *key = h_str(r.json, "preview.key");
  json_int_t step = json_integer_value(json_object_get(json_object_get(r.json, "preview"), "step"));
  snprintf(want, sizeof want, "%s/preview.png", with);
  CHECK_MSG(key && !strcmp(key, want) && !h_str(r.json, "preview.url") && step >= 1 && step < 6, "status: %s", r.body);
  char stored[600];
  snprintf(stored, sizeof stored, "%s/outputs/%s", h_dir, key ? key : "-");
  int w = 0, h = 0;
  CHECK_MSG(key && png_size(stored, &w, &h) && w == 64 && h == 64, "preview %s: %dx%d", stored, w, h);
  h_resp_free(&r);
  snprintf(path, sizeof path, "/v1/jobs/%s", without);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200 && !json_object_get(r.json, "preview"));
  h_resp_free(&r);
  /* GET .../preview serves the image; none for the job without previews */
  snprintf(path, sizeof path, "/v1/jobs/%s/preview", with);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200 && r.head &&
        strstr(r.head, "image/png") && r.body && !memcmp(r.body, "\x89PNG", 4));
  h_resp_free(&r);
  snprintf(path, sizeof path, "/v1/jobs/%s/preview", without);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 404);
  h_resp_free(&r);
  /* paella wait --preview FILE writes the latest one */
  char args[600], file[400];
  snprintf(file, sizeof file, "%s/watch.png", h_dir);
  snprintf(args, sizeof args, "wait %s --preview %s", with, file);
  CHECK_MSG(paella(args) == 0, "wait --preview: %s", slurp("err", NULL));
  w = h = 0;
  CHECK_MSG(png_size(file, &w, &h) && w == 64 && h == 64, "wait --preview wrote %dx%d", w, h);
  CHECK(paella("wait --preview - j-1") == 2 && file_has("err", "--preview: needs a file"));
  for (int i = 0; i < 2; i++) h_resp_free(&rd[i].r);
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
  CHECK_MSG(file_has("out", "\"succeeded\"") && file_has("out", "/0.png") && !file_has("out", h_dir), "%s", slurp("out", NULL));
}

/* Interpolation through `paella generate` and through the scheduler+worker: every frame's file
 * is the same bytes (the embedded parameters, "frame" included, come from one function), and
 * the worker's outputs are numbered as generate's -o numbers them (zero-padded, so they sort:
 * 11 frames are 00 .. 10). */
static void interpolate_parity(void) {
  char args[1024], id[128], dir[512];
  const char *settings = "--interpolate 'a dog' --frames 11 -W 32 -H 32 --steps 3 --prior-steps 2 --seed 5";
  snprintf(args, sizeof args, "generate 'a cat' %s -q -o %s/interp.png", settings, h_dir);
  CHECK_MSG(paella(args) == 0, "generate: %s", slurp("err", NULL));
  snprintf(args, sizeof args, "submit --prompt 'a cat' %s --wait 300", settings);
  CHECK_MSG(paella(args) == 0 && file_has("out", "\"status\": \"succeeded\""), "submit: %s", slurp("err", NULL));
  printed_id(id, sizeof id);
  snprintf(dir, sizeof dir, "%s/interp_api", h_dir);
  mkdir(dir, 0755);
  snprintf(args, sizeof args, "fetch %s -o %s", id, dir);
  CHECK_MSG(paella(args) == 0, "fetch: %s", slurp("err", NULL));
  CHECK(file_has("out", "/interp_api/00.png") && file_has("out", "/interp_api/09.png") &&
        file_has("out", "/interp_api/10.png"));
  for (int k = 0; k < 11; k++) {
    char pa[600], pb[600], frame[32];
    size_t a_len = 0, b_len = 0;
    snprintf(pa, sizeof pa, "%s/%02d.png", dir, k);
    snprintf(pb, sizeof pb, "%s/interp-%02d.png", h_dir, k);
    char *a = slurp(pa, &a_len), *b = slurp(pb, &b_len);
    CHECK_MSG(a_len > 100 && a_len == b_len && !memcmp(a, b, a_len), "frame %d: worker %zu bytes vs CLI %zu bytes differ",
              k, a_len, b_len);
    snprintf(frame, sizeof frame, "\"frame\":%d,", k);
    CHECK_MSG(memmem(a, a_len, frame, strlen(frame)) != NULL, "frame %d: no %s in the worker's file", k, frame);
    free(a);
    free(b);
  }
}

/* `paella submit --image` without -W/-H/--seed: generate's defaults (the input's size, seed 0),
 * so the same command line gives the same bytes both ways. The input is 64x96: not the API's
 * default size. */
static void submit_image_defaults(void) {
  char args[1024], id[128], dir[512], pa[600], pb[600];
  snprintf(args, sizeof args, "generate 'an input' -W 64 -H 96 --steps 2 --prior-steps 1 -q -o %s/in96.png", h_dir);
  CHECK_MSG(paella(args) == 0, "generate: %s", slurp("err", NULL));
  snprintf(args, sizeof args, "generate 'a fox' --image %s/in96.png --steps 2 --prior-steps 1 -q -o %s/i2i_cli.png", h_dir,
           h_dir);
  CHECK_MSG(paella(args) == 0, "generate: %s", slurp("err", NULL));
  snprintf(args, sizeof args, "submit --prompt 'a fox' --image %s/in96.png --steps 2 --prior-steps 1 --wait 300", h_dir);
  CHECK_MSG(paella(args) == 0 && file_has("out", "\"status\": \"succeeded\""), "submit: %s", slurp("err", NULL));
  CHECK(file_has("out", "\"seed\": 0"));
  printed_id(id, sizeof id);
  snprintf(dir, sizeof dir, "%s/i2i_api", h_dir);
  mkdir(dir, 0755);
  snprintf(args, sizeof args, "fetch %s -o %s", id, dir);
  CHECK_MSG(paella(args) == 0, "fetch: %s", slurp("err", NULL));
  snprintf(args, sizeof args, "info %s/0.png", dir);
  CHECK(paella(args) == 0 && file_has("out", "\"height\":96") && file_has("out", "\"width\":64") &&
        file_has("out", "\"seed\":0"));
  size_t a_len = 0, b_len = 0;
  snprintf(pa, sizeof pa, "%s/0.png", dir);
  snprintf(pb, sizeof pb, "%s/i2i_cli.png", h_dir);
  char *a = slurp(pa, &a_len), *b = slurp(pb, &b_len);
  CHECK_MSG(a_len > 100 && a_len == b_len && !memcmp(a, b, a_len), "img2img: worker %zu bytes vs CLI %zu bytes differ",
            a_len, b_len);
  free(a);
  free(b);
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
    interpolate_parity();
    submit_image_defaults();
    preview_events();
  }
  harness_stop_stack(t, s);
  TEST_END();
}

/* The `paella job` command as a user runs it: exit codes and the exact error line. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test.h"

#define PAELLA PAELLA_BINARY_DIR "/paella"

static char dir[] = "/tmp/paella-proto-cli-XXXXXX";

static void write_file(const char *name, const void *data, size_t len) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(data, 1, len, f);
    fclose(f);
  }
}

static char *read_file(const char *name, size_t *len) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  char *buf = calloc(1, 1 << 16);
  *len = f && buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
  if (f) fclose(f);
  return buf;
}

/* Runs `paella job <args> < in > out 2> err` in the scratch dir; returns the exit status. */
static int run(const char *args, const char *in) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "cd %s && %s job %s < %s > out 2> err", dir, PAELLA, args, in);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_line(const char *file, const char *want) {
  size_t n;
  char *got = read_file(file, &n);
  CHECK_MSG(got && !strcmp(got, want), "%s: got '%s', want '%s'", file, got ? got : "", want);
  free(got);
}

static void valid_and_invalid(void) {
  const char *job = "{\"id\":\"j1\",\"prompt\":\"a cat\",\"seed\":5}";
  write_file("job.json", job, strlen(job));
  CHECK(run("validate", "job.json") == 0);
  expect_line("out", "");
  const char *bad = "{\"id\":\"j1\",\"prompt\":\"a cat\",\"steps\":0}";
  write_file("bad.json", bad, strlen(bad));
  CHECK(run("validate", "bad.json") == 1);
  expect_line("out", "{\"code\":\"out_of_range\",\"field\":\"steps\",\"message\":\"0 is outside 1..100\"}\n");
  CHECK(run("encode", "bad.json") == 1);
  expect_line("err", "{\"code\":\"out_of_range\",\"field\":\"steps\",\"message\":\"0 is outside 1..100\"}\n");
  const char *prog = "{\"type\":\"progress\",\"job_id\":\"j1\",\"step\":1,\"total\":2,\"stage\":\"prior\",\"ts_ms\":1}";
  write_file("prog.json", prog, strlen(prog));
  CHECK(run("validate", "prog.json") == 0);
  CHECK(run("validate --type job", "prog.json") == 1);
  expect_line("out", "{\"code\":\"invalid_value\",\"field\":\"type\",\"message\":\"expected a \\\"job\\\" message\"}\n");
}

static void encode_decode(void) {
  CHECK(run("encode", "job.json") == 0);
  size_t n;
  char *mp = read_file("out", &n);
  CHECK(n > 3 && (unsigned char)mp[0] == 0xde); /* a map of more than 15 fields */
  write_file("job.mp", mp, n);
  free(mp);
  CHECK(run("validate", "job.mp") == 0);
  CHECK(run("decode", "job.mp") == 0);
  char *json = read_file("out", &n);
  CHECK_MSG(json && !strncmp(json, "{\"v\":1,\"type\":\"job\",\"id\":\"j1\",\"kind\":\"txt2img\",\"prompt\":\"a cat\",\"seed\":5,", 71),
            "%s", json);
  free(json);
  write_file("cut.mp", "\x83\xa2id", 4);
  CHECK(run("decode", "cut.mp") == 1);
  expect_line("err", "{\"code\":\"truncated\",\"field\":\"\",\"message\":\"6 values declared with 3 bytes left\"}\n");
}

/* Whatever the bytes: exit 1 and one JSON error line, never a crash. */
static void garbage(void) {
  unsigned char junk[4096];
  unsigned s = 12345;
  for (int round = 0; round < 20; round++) {
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)((s = s * 1103515245u + 12345u) >> 16);
    junk[0] = round % 2 ? 0xdf : junk[0];
    write_file("junk", junk, sizeof junk - round * 100);
    int rc = run("validate", "junk");
    size_t n;
    char *out = read_file("out", &n);
    CHECK_MSG(rc == 1 && !strncmp(out, "{\"code\":\"", 9) && n > 0 && out[n - 1] == '\n' && !strchr(out, '\n')[1],
              "round %d: rc %d, '%s'", round, rc, out);
    free(out);
  }
  write_file("empty", "", 0);
  CHECK(run("validate", "empty") == 1);
  CHECK(run("bogus", "empty") == 2);
  CHECK(run("decode --type nope", "empty") == 2);
}

int main(void) {
  if (!mkdtemp(dir)) return 1;
  valid_and_invalid();
  encode_decode();
  garbage();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  TEST_END();
}

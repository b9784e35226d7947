/* A real S3 API for tests: s3rver (tests/tools, npm) on a kernel-chosen loopback port with a
 * temp directory and one bucket, S3RVER_BUCKET. It knows one key pair (S3RVER/S3RVER) and
 * checks the key id, not the V4 signature. */
#ifndef PAELLA_TESTS_S3RVER_H
#define PAELLA_TESTS_S3RVER_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define S3RVER_BIN PAELLA_SOURCE_DIR "/tests/tools/node_modules/.bin/s3rver"
#define S3RVER_BUCKET "paella-test"

typedef struct {
  pid_t pid;
  int port;
} s3rver;

/* Starts s3rver on 127.0.0.1 with a kernel-chosen port, logging to dir/s3rver.log, and reads the
 * port from its "listening on" line. The child dies with us (PR_SET_PDEATHSIG), so a crashed
 * test leaves no server behind. */
__attribute__((unused)) static int s3rver_start(const char *dir, s3rver *sv) {
  char data[600], log[600];
  snprintf(data, sizeof data, "%s/s3", dir);
  snprintf(log, sizeof log, "%s/s3rver.log", dir);
  if (mkdir(data, 0700) != 0) return -1;
  pid_t parent = getpid();
  sv->pid = fork();
  if (sv->pid < 0) return -1;
  if (sv->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(1);
    execl(S3RVER_BIN, S3RVER_BIN, "-d", data, "-a", "127.0.0.1", "-p", "0", "--configure-bucket",
          S3RVER_BUCKET, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 1200; i++) { /* up to 60 s for node to start on a loaded machine */
    char text[4096] = "";
    FILE *f = fopen(log, "rb");
    size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    char *at = memmem(text, len, "listening on 127.0.0.1:", 23);
    sv->port = at ? atoi(at + 23) : 0;
    if (sv->port > 0) return 0;
    if (waitpid(sv->pid, NULL, WNOHANG) == sv->pid) return -1;
    usleep(50000);
  }
  return -1;
}

__attribute__((unused)) static void s3rver_stop(s3rver *sv) {
  if (sv->pid <= 0) return;
  kill(sv->pid, SIGTERM);
  waitpid(sv->pid, NULL, 0);
  sv->pid = 0;
}

#endif

#include "cli/output.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/error.h"
#include "proto/proto.h"

void cli_output_name(const char *base, const char *ext, int index, int total, char *buf, size_t cap) {
  if (total <= 1) {
    snprintf(buf, cap, "%s", base);
    return;
  }
  int digits = pw_output_digits(total);
  const char *dot = strrchr(base, '.'), *slash = strrchr(base, '/');
  if (!dot || (slash && dot < slash) || dot == base || (slash && dot == slash + 1)) {
    snprintf(buf, cap, "%s-%0*d%s", base, digits, index, ext);
    return;
  }
  snprintf(buf, cap, "%.*s-%0*d%s", (int)(dot - base), base, digits, index, dot);
}

static const char *kind_of(mode_t m) {
  return S_ISDIR(m) ? "a directory" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device"
       : S_ISFIFO(m) ? "a FIFO" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

/* The directory part of path, in buf. */
static const char *dir_of(const char *path, char *buf, size_t cap) {
  snprintf(buf, cap, "%s", path);
  return dirname(buf);
}

int cli_output_check(const char *path) {
  struct stat st;
  char dir[4096];
  if (!strcmp(path, "-"))
    return isatty(1) ? pa_fail(PA_ERR_INVALID, "-o -: standard output is a terminal; redirect it to a file or pipe")
                     : PA_OK;
  if (!*path) return pa_fail(PA_ERR_INVALID, "-o: empty file name");
  if (stat(path, &st) == 0) {
    if (S_ISREG(st.st_mode)) return PA_OK;
    return pa_fail(PA_ERR_INVALID, "%s is %s; refusing to replace it (give a regular file, a new name, or - for stdout)",
                   path, kind_of(st.st_mode));
  }
  if (errno != ENOENT) return pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  const char *d = dir_of(path, dir, sizeof dir);
  if (stat(d, &st) != 0) return pa_fail(PA_ERR_IO, "%s: directory %s: %s", path, d, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return pa_fail(PA_ERR_IO, "%s: %s is not a directory", path, d);
  return PA_OK;
}

static int write_fd(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int cli_output_write(const char *path, const void *buf, size_t len) {
  char dir[4096], tmp[4200];
  int rc = cli_output_check(path);
  if (rc) return rc;
  if (!strcmp(path, "-"))
    return write_fd(1, buf, len) ? pa_fail(PA_ERR_IO, "standard output: %s", strerror(errno)) : PA_OK;
  snprintf(tmp, sizeof tmp, "%s/.paella-XXXXXX", dir_of(path, dir, sizeof dir));
  int fd = mkstemp(tmp);
  if (fd < 0) return pa_fail(PA_ERR_IO, "%s: temporary file in %s: %s", path, dir, strerror(errno));
  mode_t mask = umask(0); /* mkstemp makes 0600; give the file the mode a plain create would */
  umask(mask);
  int bad = fchmod(fd, 0666 & ~mask) || write_fd(fd, buf, len) || fsync(fd);
  int saved = errno;
  if (close(fd) && !bad) bad = 1, saved = errno;
  if (bad) rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(saved));
  else if ((rc = cli_output_check(path)) == PA_OK && rename(tmp, path) != 0)
    rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  if (rc) unlink(tmp);
  return rc;
}

/* A minimal ustar writer for WebDataset shards: regular files only, names < 100 bytes.
 * The archive is written to a temporary name and renamed when complete. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "scheduler/sched.h"

int tar_open(tar_writer *w, const char *path) {
  memset(w, 0, sizeof *w);
  if (strlen(path) + 8 >= sizeof w->tmp) return pa_fail(PA_ERR_INVALID, "tar path too long: %s", path);
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.part", path);
  w->f = fopen(w->tmp, "wb");
  if (!w->f) return pa_fail(PA_ERR_IO, "open %s: %s", w->tmp, strerror(errno));
  return PA_OK;
}

static void octal(char *dst, size_t width, uint64_t v) {
  /* width - 1 octal digits, zero padded, then NUL */
  dst[width - 1] = 0;
  for (size_t i = width - 1; i-- > 0; v >>= 3) dst[i] = (char)('0' + (v & 7));
}

int tar_add(tar_writer *w, const char *name, const void *data, size_t len, int64_t mtime) {
  unsigned char h[512] = {0};
  if (strlen(name) >= 100) return pa_fail(PA_ERR_INVALID, "tar member name too long: %s", name);
  memcpy(h, name, strlen(name));
  octal((char *)h + 100, 8, 0644);
  octal((char *)h + 108, 8, 0);
  octal((char *)h + 116, 8, 0);
  octal((char *)h + 124, 12, len);
  octal((char *)h + 136, 12, (uint64_t)(mtime < 0 ? 0 : mtime));
  h[156] = '0';
  memcpy(h + 257, "ustar", 6);
  memcpy(h + 263, "00", 2);
  memset(h + 148, ' ', 8); /* the checksum counts its own field as spaces */
  unsigned sum = 0;
  for (int i = 0; i < 512; i++) sum += h[i];
  snprintf((char *)h + 148, 8, "%06o", sum);
  static const unsigned char pad[512];
  size_t rest = (512 - len % 512) % 512;
  if (fwrite(h, 1, 512, w->f) != 512 || (len && fwrite(data, 1, len, w->f) != len) ||
      fwrite(pad, 1, rest, w->f) != rest)
    return pa_fail(PA_ERR_IO, "write %s: %s", w->tmp, strerror(errno));
  return PA_OK;
}

int tar_close(tar_writer *w) {
  static const unsigned char end[1024];
  int rc = PA_OK;
  if (fwrite(end, 1, sizeof end, w->f) != sizeof end || fflush(w->f) || fsync(fileno(w->f)))
    rc = pa_fail(PA_ERR_IO, "write %s: %s", w->tmp, strerror(errno));
  if (fclose(w->f) && rc == PA_OK) rc = pa_fail(PA_ERR_IO, "close %s: %s", w->tmp, strerror(errno));
  w->f = NULL;
  if (rc == PA_OK && rename(w->tmp, w->path)) rc = pa_fail(PA_ERR_IO, "rename %s: %s", w->tmp, strerror(errno));
  if (rc) unlink(w->tmp);
  return rc;
}

void tar_abort(tar_writer *w) {
  if (w->f) fclose(w->f);
  w->f = NULL;
  unlink(w->tmp);
}

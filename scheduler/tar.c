/* A minimal ustar writer for WebDataset shards: regular files only, names < 100 bytes.
 * The archive streams into the store (worker/storage.h uploads: S3 multipart, or a temporary
 * file renamed into place), so a shard of any size costs one part of memory. */
#include <stdio.h>
#include <string.h>

#include "scheduler/sched.h"

int tar_open(tar_writer *w, pa_storage *store, const char *key) {
  memset(w, 0, sizeof *w);
  snprintf(w->key, sizeof w->key, "%s", key);
  return pa_storage_upload_open(store, key, "application/x-tar", &w->u);
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
  int rc = pa_storage_upload_write(w->u, h, 512);
  if (rc == PA_OK && len) rc = pa_storage_upload_write(w->u, data, len);
  if (rc == PA_OK) rc = pa_storage_upload_write(w->u, pad, rest);
  return rc ? pa_fail_context(rc, "tar %s: ", w->key) : PA_OK;
}

int tar_close(tar_writer *w, uint64_t *size) {
  static const unsigned char end[1024];
  int rc = pa_storage_upload_write(w->u, end, sizeof end);
  if (rc) {
    tar_abort(w);
    return pa_fail_context(rc, "tar %s: ", w->key);
  }
  rc = pa_storage_upload_commit(w->u, size);
  w->u = NULL;
  return rc ? pa_fail_context(rc, "tar %s: ", w->key) : PA_OK;
}

void tar_abort(tar_writer *w) {
  pa_storage_upload_abort(w->u);
  w->u = NULL;
}

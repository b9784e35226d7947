/* safetensors: a write/read round trip of every dtype and the metadata, then damaged files:
 * each gives a clear error naming what is wrong (and the tensor and offset where there is
 * one), never a crash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/error.h"
#include "ops/weights.h"
#include "tests/test.h"

static char dir[] = "/tmp/paella-st-XXXXXX";

static void write_bytes(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  fwrite(data, 1, len, f);
  fclose(f);
}

/* A file with a hand-written header: u64 length + header + data. */
static void write_raw(const char *path, const char *header, const void *data, size_t dlen) {
  size_t hlen = strlen(header);
  unsigned char *buf = malloc(8 + hlen + dlen);
  uint64_t h64 = hlen;
  memcpy(buf, &h64, 8);
  memcpy(buf + 8, header, hlen);
  if (dlen) memcpy(buf + 8 + hlen, data, dlen);
  write_bytes(path, buf, 8 + hlen + dlen);
  free(buf);
}

static void expect_error(const char *what, const char *path, int code, const char *needle) {
  pa_weights *w = NULL;
  int rc = pa_weights_open(path, &w);
  CHECK_MSG(rc == code, "%s: rc %d (want %d): %s", what, rc, code, pa_errmsg());
  CHECK_MSG(w == NULL, "%s: weights returned on error", what);
  CHECK_MSG(!needle || strstr(pa_errmsg(), needle), "%s: message '%s' lacks '%s'", what, pa_errmsg(), needle);
  printf("  %-28s -> %s\n", what, pa_errmsg());
  pa_weights_free(w);
}

static void expect_valid(const char *path) {
  pa_weights *w = NULL;
  CHECK_OK(pa_weights_open(path, &w));
  pa_weights_free(w);
}

static void test_roundtrip(const char *path) {
  pa_tensor *f32 = pa_tensor_new(PA_F32, 2, (const int64_t[]){2, 3}), *i64 = pa_tensor_new(PA_I64, 1, (const int64_t[]){4});
  pa_tensor *bf = pa_tensor_new(PA_BF16, 1, (const int64_t[]){3}), *f16 = pa_tensor_new(PA_F16, 1, (const int64_t[]){2});
  pa_tensor *scalar = pa_tensor_new(PA_F64, 0, NULL);
  for (int i = 0; i < 6; i++) ((float *)f32->data)[i] = i * 0.5f - 1;
  for (int i = 0; i < 4; i++) ((int64_t *)i64->data)[i] = (int64_t)1 << (10 * i);
  for (int i = 0; i < 3; i++) ((uint16_t *)bf->data)[i] = pa_f32_to_bf16(1.5f * i);
  ((uint16_t *)f16->data)[0] = pa_f32_to_f16(0.25f), ((uint16_t *)f16->data)[1] = pa_f32_to_f16(-2.0f);
  *(double *)scalar->data = 3.25;
  pa_weights *meta = pa_weights_new("meta");
  pa_weights_set_metadata(meta, "config", "{\"a\": 1}");
  pa_named_tensor items[] = {{"w.f32", f32}, {"in.ids", i64}, {"w.bf16", bf}, {"w.f16", f16}, {"s", scalar}};
  CHECK_OK(pa_safetensors_write(path, items, 5, meta));
  pa_weights *w = NULL;
  CHECK_OK(pa_weights_open(path, &w));
  if (!w) return;
  CHECK(pa_weights_count(w) == 5);
  CHECK(!strcmp(pa_weights_metadata(w, "config"), "{\"a\": 1}"));
  const pa_tensor *t;
  CHECK_OK(pa_weights_get(w, &t, 2, (const int64_t[]){2, 3}, "w.f32"));
  CHECK(t && !memcmp(t->data, f32->data, 24));
  CHECK_OK(pa_weights_get(w, &t, 1, (const int64_t[]){3}, "w.bf16")); /* converted to F32 once */
  CHECK(t && t->dtype == PA_F32 && ((float *)t->data)[2] == 3.0f);
  CHECK_OK(pa_weights_get(w, &t, 1, (const int64_t[]){2}, "w.f16"));
  CHECK(t && ((float *)t->data)[0] == 0.25f && ((float *)t->data)[1] == -2.0f);
  CHECK_OK(pa_weights_get_raw(w, &t, "in.ids"));
  CHECK(t && t->dtype == PA_I64 && ((int64_t *)t->data)[3] == (int64_t)1 << 30);
  CHECK_OK(pa_weights_get_raw(w, &t, "s"));
  CHECK(t && t->ndim == 0 && *(double *)t->data == 3.25);
  /* expected-shape errors name the file, key, expected and found shape */
  CHECK(pa_weights_get(w, &t, 2, (const int64_t[]){3, 2}, "w.f32") == PA_ERR_SHAPE);
  CHECK(strstr(pa_errmsg(), "'w.f32': expected shape [3, 2], found [2, 3]") && strstr(pa_errmsg(), path));
  CHECK(pa_weights_get(w, &t, 1, (const int64_t[]){1}, "nope") == PA_ERR_NOTFOUND);
  CHECK(strstr(pa_errmsg(), "missing tensor 'nope'"));
  CHECK(pa_weights_first_unused(w, NULL) == NULL); /* every tensor was fetched */
  pa_weights_reset_used(w);
  CHECK(pa_weights_first_unused(w, NULL) != NULL);
  pa_weights_free(w);
  pa_weights_free(meta);
  pa_tensor_free(f32), pa_tensor_free(i64), pa_tensor_free(bf), pa_tensor_free(f16), pa_tensor_free(scalar);
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  char good[256], bad[256];
  snprintf(good, sizeof good, "%s/good.safetensors", dir);
  snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
  test_roundtrip(good);

  /* truncations of a valid file at every interesting length */
  FILE *f = fopen(good, "rb");
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  rewind(f);
  unsigned char *buf = malloc((size_t)len);
  CHECK(fread(buf, 1, (size_t)len, f) == (size_t)len);
  fclose(f);
  long cuts[] = {0, 3, 8, 20, len / 2, len - 9, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    write_bytes(bad, buf, (size_t)cuts[i]);
    pa_weights *w = NULL;
    int rc = pa_weights_open(bad, &w);
    CHECK_MSG(rc == PA_ERR_FORMAT && !w, "cut at %ld: rc %d %s", cuts[i], rc, pa_errmsg());
    pa_weights_free(w);
  }
  printf("  truncated at %ld -> %s\n", len - 1, pa_errmsg());
  float data[4] = {1, 2, 3, 4};
  uint64_t huge = 1ull << 40;
  memcpy(buf, &huge, 8);
  write_bytes(bad, buf, (size_t)len);
  expect_error("header length past EOF", bad, PA_ERR_FORMAT, "exceeds the file");
  write_raw(bad, "{not json", data, 16);
  expect_error("header not JSON", bad, PA_ERR_FORMAT, "not valid JSON");
  write_raw(bad, "[1,2]   ", data, 16);
  expect_error("header an array", bad, PA_ERR_FORMAT, "must be a JSON object");
  write_raw(bad, "{\"a\":{\"dtype\":\"F8\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 16);
  expect_error("unknown dtype", bad, PA_ERR_FORMAT, "tensor 'a'");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,32]}}", data, 16);
  expect_error("data past the end", bad, PA_ERR_FORMAT, "outside the 16-byte data section");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[4,16]}}", data, 16);
  expect_valid(bad); /* 12 bytes for 3 floats at offset 4 */
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}", data, 16);
  expect_error("size != shape", bad, PA_ERR_FORMAT, "at offset 0, shape needs 20");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", data, 16);
  expect_error("negative dim", bad, PA_ERR_FORMAT, "bad dimension");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}}", data, 16);
  expect_error("shape overflow", bad, PA_ERR_FORMAT, "overflows");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,4],\"data_offsets\":[0,16]}}", data, 16);
  expect_error("rank 6", bad, PA_ERR_FORMAT, "rank 6");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", data, 16);
  expect_error("no data_offsets", bad, PA_ERR_FORMAT, "data_offsets");
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", data, 16);
  expect_error("duplicate key", bad, PA_ERR_FORMAT, "duplicate");
  expect_error("missing file", "/nonexistent/x.safetensors", PA_ERR_IO, "/nonexistent/x.safetensors");
  /* a misaligned data section (unpadded header) is copied, not read unaligned */
  write_raw(bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 16);
  pa_weights *w = NULL;
  CHECK_OK(pa_weights_open(bad, &w));
  const pa_tensor *t;
  CHECK(w && pa_weights_get(w, &t, 1, (const int64_t[]){4}, "a") == PA_OK && ((float *)t->data)[3] == 4.0f);
  pa_weights_free(w);
  free(buf);
  unlink(good);
  unlink(bad);
  rmdir(dir);
  TEST_END();
}

/* torch.save zip checkpoints (ops/torch_load.c, ops/pickle.c): every fixture loads to the
 * values of its safetensors twin; crafted and corrupted archives fail with clear errors. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zip.h>

#include "ops/error.h"
#include "ops/pickle.h"
#include "ops/weights.h"
#include "tests/test.h"

static char tmpdir[256];

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- comparing a loaded checkpoint with its safetensors twin ----------------------------- */

static bool is_weight(const char *name) {
  return strncmp(name, "in.", 3) != 0 && strncmp(name, "out.", 4) != 0;
}

/* The twin holds F32 (or I64); the checkpoint may hold the same values rounded to `dt`. */
static bool same_values(const pa_tensor *want, const pa_tensor *got) {
  int64_t n = pa_numel(want);
  if (want->dtype != PA_F32 || got->dtype == want->dtype)
    return got->dtype == want->dtype && memcmp(want->data, got->data, pa_nbytes(want)) == 0;
  const float *w = want->data;
  const uint16_t *g = got->data;
  for (int64_t i = 0; i < n; i++) {
    uint16_t e = got->dtype == PA_BF16 ? pa_f32_to_bf16(w[i]) : pa_f32_to_f16(w[i]);
    if (got->dtype != PA_BF16 && got->dtype != PA_F16) return false;
    if (g[i] != e) return false;
  }
  return true;
}

static void check_fixture(const char *pt, const char *twin, pa_dtype float_dtype, int extra) {
  char path[512], tpath[512];
  snprintf(path, sizeof path, "%s/%s", PAELLA_GOLDEN_DIR, pt);
  snprintf(tpath, sizeof tpath, "%s/%s", PAELLA_GOLDEN_DIR, twin);
  pa_weights *w = NULL, *ref = NULL;
  double t0 = now_ms();
  CHECK_OK(pa_weights_open(path, &w));
  double ms = now_ms() - t0;
  CHECK_OK(pa_safetensors_open(tpath, &ref));
  if (!w || !ref) goto done;
  int n_weights = 0;
  for (int i = 0; i < pa_weights_count(ref); i++) {
    const char *name = pa_weights_name(ref, i);
    if (!is_weight(name)) continue;
    n_weights++;
    const pa_tensor *want = pa_weights_tensor(ref, i), *got = pa_weights_find(w, name);
    CHECK_MSG(got != NULL, "%s: missing '%s'", pt, name);
    if (!got) continue;
    pa_dtype dt = want->dtype == PA_F32 ? float_dtype : want->dtype;
    CHECK_MSG(got->dtype == dt, "%s: '%s' dtype %s, expected %s", pt, name,
              pa_dtype_name(got->dtype), pa_dtype_name(dt));
    CHECK_MSG(pa_same_shape(want, got), "%s: '%s' shape", pt, name);
    if (pa_same_shape(want, got) && got->dtype == dt)
      CHECK_MSG(same_values(want, got), "%s: '%s' values differ", pt, name);
  }
  CHECK_MSG(pa_weights_count(w) == n_weights + extra, "%s: %d tensors, twin has %d (+%d)", pt,
            pa_weights_count(w), n_weights, extra);
  printf("%-24s %4d tensors, loaded in %.2f ms\n", pt, pa_weights_count(w), ms);
done:
  pa_weights_free(w);
  pa_weights_free(ref);
}

/* t5_tiny.bin: two names share one storage; q_transposed_view is a strided view. */
static void check_t5_views(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/t5_tiny.bin", PAELLA_GOLDEN_DIR);
  pa_weights *w = NULL;
  CHECK_OK(pa_weights_open(path, &w));
  if (!w) return;
  const pa_tensor *q = pa_weights_find(w, "encoder.block.0.layer.0.SelfAttention.q.weight");
  const pa_tensor *qt = pa_weights_find(w, "q_transposed_view");
  const pa_tensor *a = pa_weights_find(w, "shared.weight");
  const pa_tensor *b = pa_weights_find(w, "encoder.embed_tokens.weight");
  CHECK(q && qt && a && b);
  if (q && qt && a && b) {
    CHECK(qt->ndim == 2 && qt->shape[0] == q->shape[1] && qt->shape[1] == q->shape[0]);
    int64_t r = q->shape[0], c = q->shape[1];
    int bad = 0;
    for (int64_t i = 0; i < r; i++)
      for (int64_t j = 0; j < c; j++)
        bad += ((float *)q->data)[i * c + j] != ((float *)qt->data)[j * r + i];
    CHECK_MSG(bad == 0, "%d transposed elements differ", bad);
    CHECK(pa_same_shape(a, b) && memcmp(a->data, b->data, pa_nbytes(a)) == 0);
    CHECK(a->data != b->data); /* each tensor owns its copy */
  }
  pa_weights_free(w);
}

/* ---- zip helpers: read a fixture's entries, write crafted archives ----------------------- */

#define MAX_ENTRIES 512

typedef struct {
  char name[256];
  uint8_t *data;
  size_t len;
} zentry;

typedef struct {
  zentry e[MAX_ENTRIES];
  int n;
} zfiles;

static int read_zip(const char *path, zfiles *z) {
  int err;
  zip_t *za = zip_open(path, ZIP_RDONLY, &err);
  if (!za) return -1;
  z->n = 0;
  zip_int64_t n = zip_get_num_entries(za, 0);
  for (zip_int64_t i = 0; i < n && z->n < MAX_ENTRIES; i++) {
    zip_stat_t st;
    zip_stat_index(za, (zip_uint64_t)i, 0, &st);
    zentry *e = &z->e[z->n++];
    snprintf(e->name, sizeof e->name, "%s", st.name);
    e->len = (size_t)st.size;
    e->data = malloc(e->len + 1);
    zip_file_t *f = zip_fopen_index(za, (zip_uint64_t)i, 0);
    zip_fread(f, e->data, e->len);
    zip_fclose(f);
  }
  zip_discard(za);
  return 0;
}

static zentry *zfind(zfiles *z, const char *suffix) {
  size_t ls = strlen(suffix);
  for (int i = 0; i < z->n; i++) {
    size_t ln = strlen(z->e[i].name);
    if (ln >= ls && strcmp(z->e[i].name + ln - ls, suffix) == 0) return &z->e[i];
  }
  return NULL;
}

static void zfree(zfiles *z) {
  for (int i = 0; i < z->n; i++) free(z->e[i].data);
  z->n = 0;
}

static void zput(zfiles *z, const char *name, const void *data, size_t len) {
  zentry *e = &z->e[z->n++];
  snprintf(e->name, sizeof e->name, "%s", name);
  e->data = malloc(len + 1);
  memcpy(e->data, data, len);
  e->len = len;
}

static int write_zip(const char *path, const zfiles *z) {
  int err;
  zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (!za) return -1;
  for (int i = 0; i < z->n; i++) {
    zip_source_t *s = zip_source_buffer(za, z->e[i].data, z->e[i].len, 0);
    zip_int64_t idx = zip_file_add(za, z->e[i].name, s, ZIP_FL_OVERWRITE);
    zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0);
  }
  return zip_close(za);
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  fwrite(data, 1, len, f);
  fclose(f);
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len);
  *len = fread(b, 1, *len, f);
  fclose(f);
  return b;
}

/* Loads `path` into a fresh store; returns the status (message in pa_errmsg()). */
static int try_load(const char *path, pa_weights **keep) {
  pa_weights *w = pa_weights_new(path);
  int rc = pa_torch_load(path, w);
  if (keep && !rc)
    *keep = w;
  else
    pa_weights_free(w);
  return rc;
}

#define CHECK_ERR(expr, code, needle)                                                     \
  do {                                                                                    \
    int rc_e = (expr);                                                                    \
    CHECK_MSG(rc_e == (code) && strstr(pa_errmsg(), (needle)), "rc %d (want %d), msg: %s", \
              rc_e, (code), pa_errmsg());                                                 \
  } while (0)

/* A byte-string literal and its length (without the terminating NUL). */
#define BYTES(s) (const uint8_t *)(s), sizeof(s) - 1

/* ---- a tiny pickle writer for hand-crafted data.pkl ------------------------------------- */

typedef struct {
  uint8_t b[4096];
  size_t n;
} pkl;

static void op(pkl *p, uint8_t c) { p->b[p->n++] = c; }
static void raw(pkl *p, const void *d, size_t n) {
  memcpy(p->b + p->n, d, n);
  p->n += n;
}
static void ustr(pkl *p, const char *s) {
  uint32_t n = (uint32_t)strlen(s);
  op(p, 'X');
  uint8_t le[4] = {n & 255, n >> 8 & 255, n >> 16 & 255, n >> 24};
  raw(p, le, 4);
  raw(p, s, n);
}
static void gbl(pkl *p, const char *mod, const char *name) {
  op(p, 'c');
  raw(p, mod, strlen(mod));
  op(p, '\n');
  raw(p, name, strlen(name));
  op(p, '\n');
}
static void int1(pkl *p, int v) {
  op(p, 'K');
  op(p, (uint8_t)v);
}

/* Emits _rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, OrderedDict()). */
static void tensor(pkl *p, const char *cls, const char *key, int numel, int offset, int ndim,
                   const int *size, const int *stride) {
  gbl(p, "torch._utils", "_rebuild_tensor_v2");
  op(p, '(');
  op(p, '(');
  ustr(p, "storage");
  gbl(p, "torch", cls);
  ustr(p, key);
  ustr(p, "cpu");
  int1(p, numel);
  op(p, 't');
  op(p, 'Q');
  int1(p, offset);
  op(p, '(');
  for (int i = 0; i < ndim; i++) int1(p, size[i]);
  op(p, 't');
  op(p, '(');
  for (int i = 0; i < ndim; i++) int1(p, stride[i]);
  op(p, 't');
  op(p, 0x89);
  gbl(p, "collections", "OrderedDict");
  op(p, ')');
  op(p, 'R');
  op(p, 't');
  op(p, 'R');
}

/* A one-tensor checkpoint {"w": view} over storage "0" holding 0, 1, ..., n-1 as floats. */
static void one_tensor_pkl(pkl *p, int numel, int offset, int ndim, const int *size,
                           const int *stride) {
  p->n = 0;
  raw(p, "\x80\x02}(", 4);
  ustr(p, "w");
  tensor(p, "FloatStorage", "0", numel, offset, ndim, size, stride);
  raw(p, "u.", 2);
}

static void write_ckpt(const char *path, const pkl *p, int storage_floats, const char *byteorder) {
  zfiles z = {.n = 0};
  zput(&z, "arc/data.pkl", p->b, p->n);
  float f[64];
  for (int i = 0; i < 64; i++) f[i] = (float)i;
  zput(&z, "arc/data/0", f, (size_t)storage_floats * 4);
  zput(&z, "arc/version", "3\n", 2);
  if (byteorder) zput(&z, "arc/byteorder", byteorder, strlen(byteorder));
  write_zip(path, &z);
  zfree(&z);
}

/* ---- crafted archives -------------------------------------------------------------------- */

static void test_views(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/views.pt", tmpdir);
  pkl p;
  pa_weights *w = NULL;
  /* offset 1, size (2, 3), stride (1, 2): rows are 1 3 5 / 2 4 6 */
  int sz[] = {2, 3}, st[] = {1, 2};
  one_tensor_pkl(&p, 8, 1, 2, sz, st);
  write_ckpt(path, &p, 8, "little");
  CHECK_OK(try_load(path, &w));
  const pa_tensor *t = w ? pa_weights_find(w, "w") : NULL;
  CHECK(t && t->dtype == PA_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
  if (t) {
    const float *d = t->data, want[] = {1, 3, 5, 2, 4, 6};
    CHECK(memcmp(d, want, sizeof want) == 0);
  }
  pa_weights_free(w);

  /* contiguous slice at an offset, and a 0-dim scalar */
  int sz1[] = {3}, st1[] = {1};
  one_tensor_pkl(&p, 8, 5, 1, sz1, st1);
  write_ckpt(path, &p, 8, NULL);
  w = NULL;
  CHECK_OK(try_load(path, &w));
  t = w ? pa_weights_find(w, "w") : NULL;
  CHECK(t && t->ndim == 1 && ((float *)t->data)[0] == 5 && ((float *)t->data)[2] == 7);
  pa_weights_free(w);
  one_tensor_pkl(&p, 8, 7, 0, NULL, NULL);
  write_ckpt(path, &p, 8, NULL);
  w = NULL;
  CHECK_OK(try_load(path, &w));
  t = w ? pa_weights_find(w, "w") : NULL;
  CHECK(t && t->ndim == 0 && pa_numel(t) == 1 && ((float *)t->data)[0] == 7);
  pa_weights_free(w);
}

/* Protocol-4 framing, memoize, lists/floats/longs beside the weights, BUILD on an
 * OrderedDict state and _rebuild_parameter: all accepted, only the tensor kept. */
static void test_other_values(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/values.pt", tmpdir);
  pkl p = {.n = 0};
  int sz[] = {4}, st[] = {1};
  raw(&p, "\x80\x04\x95\0\0\0\0\0\0\0\0", 11); /* FRAME length patched below */
  gbl(&p, "collections", "OrderedDict");
  raw(&p, ")R\x94(", 4);
  op(&p, 0x8c);
  op(&p, 5);
  raw(&p, "extra", 5);
  raw(&p, BYTES("](K\x01G\x3f\xf8\0\0\0\0\0\0\x8a\x02\x00\x80N\x88\x89" "e"));
  ustr(&p, "param");
  gbl(&p, "torch._utils", "_rebuild_parameter");
  op(&p, '(');
  tensor(&p, "FloatStorage", "0", 4, 0, 1, sz, st);
  raw(&p, "\x88}t", 3);
  op(&p, 'R');
  raw(&p, BYTES("u}(X\x09\0\0\0_metadatah\x00u"));
  raw(&p, "b.", 2);
  uint64_t frame = p.n - 11;
  for (int i = 0; i < 8; i++) p.b[3 + i] = (uint8_t)(frame >> (8 * i));
  write_ckpt(path, &p, 4, "little");
  pa_weights *w = NULL;
  CHECK_OK(try_load(path, &w));
  CHECK(w && pa_weights_count(w) == 1 && pa_weights_find(w, "param"));
  pa_weights_free(w);

  /* the values themselves, through the unpickler API */
  pk_doc *doc = NULL;
  const pk_value *root;
  CHECK_OK(pk_parse(p.b, p.n, &doc, &root));
  const pk_value *l = doc ? pk_dict_get(root, "extra") : NULL;
  CHECK(l && l->kind == PK_LIST && l->seq.n == 6);
  if (l && l->seq.n == 6) {
    CHECK(l->seq.items[0]->kind == PK_INT && l->seq.items[0]->i == 1);
    CHECK(l->seq.items[1]->kind == PK_FLOAT && l->seq.items[1]->f == 1.5);
    CHECK(l->seq.items[2]->kind == PK_INT && l->seq.items[2]->i == -32768);
    CHECK(l->seq.items[3]->kind == PK_NONE && l->seq.items[4]->b && !l->seq.items[5]->b);
  }
  pk_doc_free(doc);
}

static void test_refusals(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/bad.pt", tmpdir);
  pkl p = {.n = 0};
  int rc;

  /* the classic: cos\nsystem\n(S'...'tR. */
  raw(&p, "\x80\x02", 2);
  gbl(&p, "os", "system");
  op(&p, '(');
  ustr(&p, "echo pwned");
  raw(&p, "tR.", 3);
  write_ckpt(path, &p, 1, NULL);
  rc = try_load(path, NULL);
  CHECK_ERR(rc, PA_ERR_UNSUPPORTED, "GLOBAL 'os system'");
  CHECK_MSG(strstr(pa_errmsg(), "data.pkl offset 2") && strstr(pa_errmsg(), path), "%s",
            pa_errmsg());

  /* a GLOBAL that is allowed as a class but not callable through REDUCE */
  p.n = 0;
  raw(&p, "\x80\x02", 2);
  gbl(&p, "torch", "FloatStorage");
  raw(&p, ")R.", 3);
  write_ckpt(path, &p, 1, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_UNSUPPORTED, "storage class");

  /* an opcode outside the allowlist (INST) */
  p.n = 0;
  raw(&p, BYTES("\x80\x02(ios\nsystem\n."));
  write_ckpt(path, &p, 1, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_UNSUPPORTED, "opcode 0x69 ('i')");

  /* a view reaching past its storage */
  int sz[] = {2, 2}, st[] = {2, 1};
  one_tensor_pkl(&p, 6, 3, 2, sz, st);
  write_ckpt(path, &p, 6, NULL);
  rc = try_load(path, NULL);
  CHECK_ERR(rc, PA_ERR_FORMAT, "tensor 'w'");
  CHECK_MSG(strstr(pa_errmsg(), "reaches element 6 of 'arc/data/0'"), "%s", pa_errmsg());

  /* a storage entry shorter than its declared numel */
  int sz2[] = {6}, st2[] = {1};
  one_tensor_pkl(&p, 6, 0, 1, sz2, st2);
  write_ckpt(path, &p, 5, NULL);
  rc = try_load(path, NULL);
  CHECK_ERR(rc, PA_ERR_FORMAT, "'arc/data/0' holds 20 bytes, the pickle declares 24");
  CHECK(strstr(pa_errmsg(), "tensor 'w'") != NULL);

  /* expand(): stride 0 */
  int sz3[] = {4}, st3[] = {0};
  one_tensor_pkl(&p, 1, 0, 1, sz3, st3);
  write_ckpt(path, &p, 1, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_UNSUPPORTED, "overlapping view");

  /* big-endian archives */
  one_tensor_pkl(&p, 6, 0, 1, sz2, st2);
  write_ckpt(path, &p, 6, "big");
  CHECK_ERR(try_load(path, NULL), PA_ERR_UNSUPPORTED, "byteorder 'big'");

  /* a duplicate key, no tensors, not a dict */
  p.n = 0;
  raw(&p, "\x80\x02}(", 4);
  for (int i = 0; i < 2; i++) {
    ustr(&p, "w");
    tensor(&p, "FloatStorage", "0", 6, 0, 1, sz2, st2);
  }
  raw(&p, "u.", 2);
  write_ckpt(path, &p, 6, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_FORMAT, "duplicate tensor 'w'");
  write_ckpt(path, &(pkl){.b = "\x80\x02}X\x04\0\0\0iterK\x05s.", .n = 16}, 1, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_NOTFOUND, "no tensors");
  write_ckpt(path, &(pkl){.b = "\x80\x02].", .n = 4}, 1, NULL);
  CHECK_ERR(try_load(path, NULL), PA_ERR_FORMAT, "does not hold a dict");

  /* not a checkpoint at all */
  write_file(path, "PK\3\4 not really a zip", 22);
  CHECK_ERR(try_load(path, NULL), PA_ERR_FORMAT, "not a readable zip");
}

/* Malformed pickles straight into the unpickler: each must fail cleanly. */
static void test_malformed_pickles(void) {
  static const struct {
    const uint8_t *bytes;
    size_t n;
    const char *needle;
  } cases[] = {
      {BYTES(""), "no STOP"},
      {BYTES("\x80\x02}"), "no STOP"},
      {BYTES("\x80\x02X\xff\xff\xff\x7f"), "truncated"},
      {BYTES("\x80\x02h\x05."), "memo index 5 was never stored"},
      {BYTES("\x80\x02}q\xff."), "memo index 255 out of range"},
      {BYTES("\x80\x02u."), "no open MARK"},
      {BYTES("\x80\x02(R."), "stack underflow"},
      {BYTES("\x80\x02}}."), "STOP with 2 stack items"},
      {BYTES("\x80\x09."), "protocol 9"},
      {BYTES("\x80\x02\x8a\x09"), "LONG1 integer of 9 bytes"},
      {BYTES("\x80\x02]K\x01K\x02s."), "expected a dict"},
      {BYTES("\x80\x02" "cos\nsys"), "unterminated"},
      {BYTES("\x80\x02\x00"), "opcode 0x00 is not supported"},
      {BYTES("\x80\x02N(K\x01tQ."), "persistent id"},
      {BYTES("\x80\x02X\x01\x00\x00\x00\x00."), "NUL byte"},
      {BYTES("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x02tR."), "6 or 7 arguments"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    pk_doc *doc = NULL;
    const pk_value *root;
    int rc = pk_parse(cases[i].bytes, cases[i].n, &doc, &root);
    CHECK_MSG(rc != 0 && strstr(pa_errmsg(), cases[i].needle), "case %zu: rc %d msg %s", i, rc,
              pa_errmsg());
    pk_doc_free(doc);
  }
  /* MARK nesting beyond the bound */
  uint8_t deep[300];
  memset(deep, '(', sizeof deep);
  pk_doc *doc = NULL;
  const pk_value *root;
  CHECK_ERR(pk_parse(deep, sizeof deep, &doc, &root), PA_ERR_FORMAT, "MARK nesting deeper");
}

/* ---- corrupting the real fixtures -------------------------------------------------------- */

static void test_truncated(const char *fixture) {
  char src[512], path[512];
  snprintf(src, sizeof src, "%s/%s", PAELLA_GOLDEN_DIR, fixture);
  snprintf(path, sizeof path, "%s/trunc_%s", tmpdir, fixture);
  size_t len;
  uint8_t *b = read_file(src, &len);
  size_t cuts[] = {0, 4, 31, 200, len / 10, len / 3, len / 2, len - 200, len - 23, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    write_file(path, b, cuts[i]);
    int rc = try_load(path, NULL);
    CHECK_MSG(rc != 0 && strstr(pa_errmsg(), path), "%s cut at %zu: rc %d: %s", fixture, cuts[i],
              rc, pa_errmsg());
  }
  free(b);
}

/* Flipped bytes on disk: the entry CRC catches them, in data.pkl and in a storage. */
static void test_flipped_on_disk(const char *fixture) {
  char src[512], path[512];
  snprintf(src, sizeof src, "%s/%s", PAELLA_GOLDEN_DIR, fixture);
  snprintf(path, sizeof path, "%s/flip_%s", tmpdir, fixture);
  zfiles z = {.n = 0};
  read_zip(src, &z);
  size_t len;
  uint8_t *b = read_file(src, &len);
  const zentry *targets[] = {zfind(&z, "/data.pkl"), zfind(&z, "/data/3")};
  for (int t = 0; t < 2; t++) {
    CHECK(targets[t] != NULL);
    if (!targets[t]) continue;
    uint8_t *at = memmem(b, len, targets[t]->data, targets[t]->len);
    CHECK(at != NULL);
    if (!at) continue;
    size_t pos = (size_t)(at - b) + targets[t]->len / 2;
    b[pos] ^= 0x5a;
    write_file(path, b, len);
    int rc = try_load(path, NULL);
    CHECK_MSG(rc == PA_ERR_FORMAT && strstr(pa_errmsg(), targets[t]->name), "%s: %s", fixture,
              pa_errmsg());
    b[pos] ^= 0x5a;
  }
  free(b);
  zfree(&z);
}

/* Every byte of data.pkl flipped (with a valid CRC, so the unpickler sees it): the load may
 * succeed (a changed name or number) or fail, but never crash; the sanitizer build checks. */
static void test_flipped_pickle(const char *fixture, int loader_every) {
  char src[512], path[512];
  snprintf(src, sizeof src, "%s/%s", PAELLA_GOLDEN_DIR, fixture);
  snprintf(path, sizeof path, "%s/pflip_%s", tmpdir, fixture);
  zfiles z = {.n = 0};
  read_zip(src, &z);
  zentry *pk = zfind(&z, "/data.pkl");
  CHECK(pk != NULL);
  if (!pk) return;
  int failed = 0, ok = 0;
  static const uint8_t masks[] = {0x01, 0x80, 0xff};
  for (size_t i = 0; i < pk->len; i++)
    for (size_t m = 0; m < sizeof masks; m++) {
      pk->data[i] ^= masks[m];
      pk_doc *doc = NULL;
      const pk_value *root;
      int rc = pk_parse(pk->data, pk->len, &doc, &root);
      pk_doc_free(doc);
      if (m == 0 && i % (size_t)loader_every == 0) { /* and the full loader on some */
        write_zip(path, &z);
        rc = try_load(path, NULL);
      }
      if (rc)
        failed++;
      else
        ok++;
      pk->data[i] ^= masks[m];
    }
  CHECK(failed > 0);
  printf("%s: %zu flipped pickles: %d refused, %d still parsed\n", fixture, pk->len * 3, failed,
         ok);
  zfree(&z);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/paella_torch_load_XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  check_fixture("paella_tiny.pt", "paella_tiny.safetensors", PA_F32, 0);
  check_fixture("paella_tiny_bf16.pt", "paella_tiny.safetensors", PA_BF16, 0);
  check_fixture("vqgan_tiny_nested.pt", "vqgan_tiny.safetensors", PA_F32, 0);
  check_fixture("prior_tiny_f16.pt", "prior_tiny.safetensors", PA_F16, 0);
  check_fixture("t5_tiny.bin", "t5_tiny.safetensors", PA_F32, 1);
  check_t5_views();
  test_views();
  test_other_values();
  test_refusals();
  test_malformed_pickles();
  test_truncated("t5_tiny.bin");
  test_truncated("vqgan_tiny_nested.pt");
  test_flipped_on_disk("t5_tiny.bin");
  test_flipped_pickle("t5_tiny.bin", 13);
  test_flipped_pickle("vqgan_tiny_nested.pt", 29);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_END();
}

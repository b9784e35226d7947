/* Loads a PyTorch `torch.save` zip checkpoint (paella_v3.pt, prior_v1.pt, vqgan_f4.pt,
 * ByT5's pytorch_model.bin) into a pa_weights store without Python.
 *
 * Layout of the archive: `<name>/data.pkl` (the pickled object), `<name>/data/<key>` (one
 * entry per storage, raw little-endian elements, normally stored uncompressed),
 * `<name>/version` and sometimes `<name>/byteorder`. data.pkl is read by the allowlisted
 * unpickler in ops/pickle.c, which turns it into plain descriptors; nothing is executed.
 *
 * Which tensors are loaded (the flattening rule):
 *   - the pickled object must be a dict (or OrderedDict) with string keys;
 *   - every top-level value that is a tensor is added under its key;
 *   - then the first of the wrapper keys "state_dict", "model", "module", "ema" whose value
 *     is a dict has its tensor values added under their inner names (a training checkpoint
 *     such as {"state_dict": {...}, "iter": 500000, "optimizer": {...}});
 *   - everything else (ints, optimizer state, deeper dicts, later wrappers) is ignored;
 *   - a file with no tensor at all is an error.
 *
 * Memory: each storage entry is read into its own 64-byte aligned buffer (libzip decodes
 * deflated entries too, and checks the CRC). When a tensor is the only user of its storage
 * and covers it exactly (the usual case), the buffer becomes the tensor's data with no copy;
 * otherwise (shared storages, offsets, strided views) the tensor is materialised as a
 * contiguous copy and the buffer is freed once its last tensor is built. Peak memory is
 * therefore about the loaded weights plus one storage, never the file twice. mmap of the zip
 * was not chosen: stored entries are not guaranteed to be aligned for their dtype, deflated
 * entries would still need a buffer, and the mapping would pin the whole file. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

#include "ops/error.h"
#include "ops/pickle.h"
#include "ops/weights.h"

#define PKL_MAX_BYTES ((zip_uint64_t)1 << 30) /* a real data.pkl is ~100 kB */
#define ENTRY_NAME_MAX 512
/* ByT5-XL has ~600 tensors, paella_v3 ~1k: the cap keeps hostile files from asking for
 * millions of names (the weight store looks names up linearly). */
#define MAX_TENSORS (1 << 17)

typedef struct {
  const char *key; /* borrowed from the pickle document */
  pa_dtype dtype;
  int64_t numel;
  int refs;      /* tensors still to be built from this storage */
  void *data;    /* read lazily; NULL before and after use */
} storage_slot;

typedef struct {
  const char *name;
  const pk_tensor *t;
  storage_slot *slot;
} pending_tensor;

typedef struct {
  const char *path;
  zip_t *zip;
  char prefix[256]; /* <name> of <name>/data.pkl */
  pending_tensor *tensors;
  int n_tensors, cap_tensors;
  storage_slot *slots;
  int n_slots;
} loader;

/* ---- zip access ------------------------------------------------------------------------ */

static int open_zip(loader *ld) {
  int err = 0;
  ld->zip = zip_open(ld->path, ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (ld->zip) return PA_OK;
  zip_error_t ze;
  zip_error_init_with_code(&ze, err);
  struct stat st;
  long long size = stat(ld->path, &st) == 0 ? (long long)st.st_size : -1;
  bool io = err == ZIP_ER_OPEN || err == ZIP_ER_READ || err == ZIP_ER_NOENT;
  /* A truncated checkpoint lands here: its central directory (at the end) is gone. */
  int rc = pa_fail(io ? PA_ERR_IO : PA_ERR_FORMAT, "not a readable zip archive (%lld bytes): %s",
                   size, zip_error_strerror(&ze));
  zip_error_fini(&ze);
  return rc;
}

/* Finds "<prefix>/data.pkl": torch names the top folder after the file it saved to. */
static int find_prefix(loader *ld) {
  zip_int64_t n = zip_get_num_entries(ld->zip, 0);
  for (zip_int64_t i = 0; i < n; i++) {
    const char *name = zip_get_name(ld->zip, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
    const char *slash = name ? strchr(name, '/') : NULL;
    if (!slash || strcmp(slash, "/data.pkl") != 0) continue;
    size_t len = (size_t)(slash - name);
    if (len == 0 || len >= sizeof ld->prefix) continue;
    memcpy(ld->prefix, name, len);
    ld->prefix[len] = 0;
    return PA_OK;
  }
  return pa_fail(PA_ERR_FORMAT, "no <name>/data.pkl entry: not a torch.save zip checkpoint");
}

/* Reads entry `name` (exactly `want` bytes, or any size <= `max` when want < 0) into a new
 * 64-byte aligned buffer, zero-padded after the data (so text entries end in a NUL). */
static int read_entry(loader *ld, const char *name, int64_t want, zip_uint64_t max,
                      void **out, size_t *out_len) {
  zip_stat_t st;
  zip_int64_t idx = zip_name_locate(ld->zip, name, ZIP_FL_ENC_RAW);
  if (idx < 0) return pa_fail(PA_ERR_NOTFOUND, "missing entry '%s'", name);
  if (zip_stat_index(ld->zip, (zip_uint64_t)idx, 0, &st) || !(st.valid & ZIP_STAT_SIZE))
    return pa_fail(PA_ERR_FORMAT, "entry '%s': %s", name, zip_strerror(ld->zip));
  if (want >= 0 && st.size != (zip_uint64_t)want)
    return pa_fail(PA_ERR_FORMAT, "entry '%s' holds %llu bytes, the pickle declares %lld", name,
                   (unsigned long long)st.size, (long long)want);
  if (want < 0 && st.size > max)
    return pa_fail(PA_ERR_FORMAT, "entry '%s' is %llu bytes (limit %llu)", name,
                   (unsigned long long)st.size, (unsigned long long)max);
  size_t len = (size_t)st.size, alloc = (len + 64) / 64 * 64; /* room for a NUL, never 0 */
  char *buf = aligned_alloc(64, alloc);
  if (!buf) return pa_fail(PA_ERR_NOMEM, "out of memory reading '%s' (%zu bytes)", name, len);
  memset(buf + len, 0, alloc - len);
  zip_file_t *f = zip_fopen_index(ld->zip, (zip_uint64_t)idx, 0);
  if (!f) {
    free(buf);
    return pa_fail(PA_ERR_FORMAT, "entry '%s': %s", name, zip_strerror(ld->zip));
  }
  size_t got = 0;
  zip_int64_t r = 1;
  while (got < len && (r = zip_fread(f, buf + got, len - got)) > 0) got += (size_t)r;
  /* One more read at the end makes libzip verify the entry's CRC-32. */
  char probe;
  if (r > 0) r = zip_fread(f, &probe, 1);
  int rc = PA_OK;
  if (r < 0)
    rc = pa_fail(PA_ERR_FORMAT, "entry '%s' (%zu bytes), at byte %zu: %s", name, len, got,
                 zip_file_strerror(f));
  else if (got != len || r != 0)
    rc = pa_fail(PA_ERR_FORMAT, "entry '%s': %zu bytes read, %zu declared", name, got, len);
  zip_fclose(f);
  if (rc) {
    free(buf);
    return rc;
  }
  *out = buf;
  *out_len = len;
  return PA_OK;
}

static int check_byteorder(loader *ld) {
  char name[ENTRY_NAME_MAX];
  snprintf(name, sizeof name, "%s/byteorder", ld->prefix);
  if (zip_name_locate(ld->zip, name, ZIP_FL_ENC_RAW) < 0) return PA_OK; /* older: little */
  void *buf;
  size_t len;
  int rc = read_entry(ld, name, -1, 64, &buf, &len);
  if (rc) return rc;
  if (strcmp(buf, "little") != 0)
    rc = pa_fail(PA_ERR_UNSUPPORTED, "byteorder '%.16s': only little-endian checkpoints",
                 (char *)buf);
  free(buf);
  return rc;
}

/* ---- which tensors to load --------------------------------------------------------------- */

static int add_pending(loader *ld, const char *name, const pk_value *v) {
  if (ld->n_tensors >= MAX_TENSORS)
    return pa_fail(PA_ERR_UNSUPPORTED, "more than %d tensors", MAX_TENSORS);
  if (ld->n_tensors == ld->cap_tensors) {
    int cap = ld->cap_tensors ? 2 * ld->cap_tensors : 256;
    pending_tensor *n = realloc(ld->tensors, (size_t)cap * sizeof *n);
    if (!n) return pa_fail(PA_ERR_NOMEM, "out of memory");
    ld->tensors = n;
    ld->cap_tensors = cap;
  }
  ld->tensors[ld->n_tensors++] = (pending_tensor){name, &v->tensor, NULL};
  return PA_OK;
}

/* Queues the tensor values of `dict` under their (string) keys; other values are skipped. */
static int collect_dict(loader *ld, const pk_value *dict) {
  for (int64_t i = 0; i < dict->dict.n; i++) {
    const pk_value *k = dict->dict.keys[i], *v = dict->dict.vals[i];
    if (v->kind != PK_TENSOR) continue;
    if (k->kind != PK_STR)
      return pa_fail(PA_ERR_FORMAT, "a tensor (data.pkl offset %zu) has a non-string key",
                     v->tensor.pkl_offset);
    int rc = add_pending(ld, k->str.s, v);
    if (rc) return rc;
  }
  return PA_OK;
}

static int collect(loader *ld, const pk_value *root) {
  static const char *const wrappers[] = {"state_dict", "model", "module", "ema"};
  if (root->kind != PK_DICT) return pa_fail(PA_ERR_FORMAT, "data.pkl does not hold a dict");
  int rc = collect_dict(ld, root);
  for (size_t i = 0; !rc && i < sizeof wrappers / sizeof *wrappers; i++) {
    const pk_value *inner = pk_dict_get(root, wrappers[i]);
    if (inner && inner->kind == PK_DICT) {
      rc = collect_dict(ld, inner);
      break;
    }
  }
  if (!rc && ld->n_tensors == 0)
    rc = pa_fail(PA_ERR_NOTFOUND,
                 "no tensors at the top level or under state_dict/model/module/ema");
  return rc;
}

/* ---- storages: one slot per distinct key, shared by the tensors that view it -------------- */

static int cmp_slot(const void *a, const void *b) {
  return strcmp(((const storage_slot *)a)->key, ((const storage_slot *)b)->key);
}

/* Sorts the distinct storage keys (O(n log n) even for a hostile number of tensors) and
 * links every pending tensor to its slot, counting references. */
static int link_storages(loader *ld) {
  ld->slots = calloc((size_t)ld->n_tensors, sizeof *ld->slots);
  if (!ld->slots) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int i = 0; i < ld->n_tensors; i++) {
    const pk_value *s = ld->tensors[i].t->storage;
    ld->slots[i] = (storage_slot){s->storage.key, s->storage.dtype, s->storage.numel, 0, NULL};
  }
  qsort(ld->slots, (size_t)ld->n_tensors, sizeof *ld->slots, cmp_slot);
  int n = 0;
  for (int i = 0; i < ld->n_tensors; i++) {
    storage_slot *s = &ld->slots[i];
    if (n > 0 && strcmp(ld->slots[n - 1].key, s->key) == 0) {
      if (ld->slots[n - 1].dtype != s->dtype || ld->slots[n - 1].numel != s->numel)
        return pa_fail(PA_ERR_FORMAT, "storage '%s' is declared with two dtypes or sizes", s->key);
      continue;
    }
    ld->slots[n++] = *s;
  }
  ld->n_slots = n;
  for (int i = 0; i < ld->n_tensors; i++) {
    storage_slot probe = {.key = ld->tensors[i].t->storage->storage.key};
    storage_slot *s = bsearch(&probe, ld->slots, (size_t)n, sizeof *s, cmp_slot);
    s->refs++;
    ld->tensors[i].slot = s;
  }
  return PA_OK;
}

static int load_slot(loader *ld, storage_slot *s) {
  if (s->data) return PA_OK;
  char name[ENTRY_NAME_MAX];
  snprintf(name, sizeof name, "%s/data/%s", ld->prefix, s->key);
  int64_t bytes;
  if (__builtin_mul_overflow(s->numel, (int64_t)pa_dtype_size(s->dtype), &bytes))
    return pa_fail(PA_ERR_FORMAT, "storage '%s' size overflows", name);
  size_t len;
  return read_entry(ld, name, bytes, 0, &s->data, &len);
}

/* ---- materialising one tensor ------------------------------------------------------------ */

static bool is_contiguous(const pk_tensor *t) {
  int64_t expect = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->size[d] != 1 && t->stride[d] != expect) return false;
    expect *= t->size[d];
  }
  return true;
}

/* Gathers a strided view element by element (an odometer over the dims). Rare in real
 * checkpoints, so simplicity wins over speed here. */
static void gather(char *dst, const char *src, const pk_tensor *t, int64_t numel, size_t es) {
  int64_t idx[PA_MAX_DIMS] = {0};
  for (int64_t i = 0; i < numel; i++) {
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    memcpy(dst + (size_t)i * es, src + (size_t)off * es, es);
    for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->size[d]; d--) idx[d] = 0;
  }
}

/* Checks the view against its storage; *numel gets the tensor's element count. */
static int check_view(const loader *ld, const pending_tensor *p, int64_t *numel) {
  *numel = 0;
  const pk_tensor *t = p->t;
  const storage_slot *s = p->slot;
  int64_t extent, n = 1;
  int rc = pk_tensor_extent(t, &extent);
  if (rc) return rc;
  if (extent > s->numel)
    return pa_fail(PA_ERR_FORMAT,
                   "view (storage_offset %lld, rank %d) reaches element %lld of '%s/data/%s', "
                   "a %s storage of %lld elements",
                   (long long)t->offset, t->ndim, (long long)extent - 1, ld->prefix, s->key,
                   pa_dtype_name(s->dtype), (long long)s->numel);
  for (int d = 0; d < t->ndim; d++)
    if (__builtin_mul_overflow(n, t->size[d], &n)) n = INT64_MAX;
  /* More elements than the storage means the view overlaps itself (stride 0: expand()). */
  if (n > s->numel)
    return pa_fail(PA_ERR_UNSUPPORTED, "overlapping view: %lld elements over '%s/data/%s' of %lld",
                   (long long)n, ld->prefix, s->key, (long long)s->numel);
  *numel = n;
  return PA_OK;
}

static int build_tensor(loader *ld, pending_tensor *p, pa_tensor **out) {
  const pk_tensor *t = p->t;
  storage_slot *s = p->slot;
  size_t es = pa_dtype_size(s->dtype);
  int64_t numel;
  int rc = check_view(ld, p, &numel);
  if (!rc) rc = load_slot(ld, s);
  if (rc) return rc;
  pa_tensor *r;
  if (s->refs == 1 && t->offset == 0 && numel == s->numel && is_contiguous(t)) {
    /* Sole user covering the whole storage: adopt the buffer instead of copying it. */
    if (!(r = pa_tensor_wrap(s->dtype, t->ndim, t->size, s->data))) return PA_ERR_NOMEM;
    r->owns_data = true;
    s->data = NULL;
  } else {
    if (!(r = pa_tensor_new(s->dtype, t->ndim, t->size))) return PA_ERR_NOMEM;
    /* an empty view's offset is never dereferenced: it may point anywhere */
    if (numel > 0 && is_contiguous(t))
      memcpy(r->data, (char *)s->data + (size_t)t->offset * es, (size_t)numel * es);
    else if (numel > 0)
      gather(r->data, s->data, t, numel, es);
  }
  if (--s->refs == 0) {
    free(s->data);
    s->data = NULL;
  }
  *out = r;
  return PA_OK;
}

static int load_tensors(loader *ld, pa_weights *w) {
  for (int i = 0; i < ld->n_tensors; i++) {
    pending_tensor *p = &ld->tensors[i];
    pa_tensor *t;
    int rc = build_tensor(ld, p, &t);
    if (!rc) rc = pa_weights_add(w, p->name, t); /* takes t even on failure */
    if (rc)
      return pa_fail_context(rc, "tensor '%s' (data.pkl offset %zu): ", p->name,
                             p->t->pkl_offset);
  }
  return PA_OK;
}

/* ---- entry point ------------------------------------------------------------------------- */

static int read_pickle(loader *ld, pk_doc **doc, const pk_value **root) {
  char name[ENTRY_NAME_MAX];
  snprintf(name, sizeof name, "%s/data.pkl", ld->prefix);
  void *buf;
  size_t len;
  int rc = read_entry(ld, name, -1, PKL_MAX_BYTES, &buf, &len);
  if (rc) return rc;
  rc = pk_parse(buf, len, doc, root);
  free(buf);
  return rc;
}

int pa_torch_load(const char *path, pa_weights *w) {
  loader ld = {.path = path};
  pk_doc *doc = NULL;
  const pk_value *root;
  int rc;
  PA_TRY(open_zip(&ld));
  PA_TRY(find_prefix(&ld));
  PA_TRY(check_byteorder(&ld));
  PA_TRY(read_pickle(&ld, &doc, &root));
  PA_TRY(collect(&ld, root));
  PA_TRY(link_storages(&ld));
  PA_TRY(load_tensors(&ld, w));
fail:
  for (int i = 0; i < ld.n_slots; i++) free(ld.slots[i].data);
  free(ld.slots);
  free(ld.tensors);
  pk_doc_free(doc);
  if (ld.zip) zip_discard(ld.zip); /* read-only: nothing to write back */
  if (rc) return pa_fail_context(rc, "%s: ", path);
  return PA_OK;
}

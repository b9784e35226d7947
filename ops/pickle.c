/* The allowlisted unpickler (see ops/pickle.h). Written from the pickle format as documented
 * in CPython's pickletools; only the opcodes torch.save emits for dicts of tensors (and a few
 * cheap neighbours: protocol 4 framing, short strings) are implemented. */
#include "ops/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/error.h"

/* Bounds: a real data.pkl (paella_v3: ~1k tensors, ByT5-XL: ~600) stays far below these;
 * they only stop a hostile file from making the parser allocate without limit. */
#define PK_MAX_STACK (1 << 20)
#define PK_MAX_MARKS 64          /* MARK nesting: torch.save needs 3 */
#define PK_MAX_MEMO (1 << 24)
#define PK_MAX_GLOBAL_NAME 128

struct pk_doc {
  pk_value **values; /* every value ever created: the arena */
  int64_t n, cap;
};

typedef struct {
  const uint8_t *buf;
  size_t len, pos, op_pos; /* op_pos: offset of the opcode being executed */
  pk_doc *doc;
  pk_value **stack;
  int64_t sp, stack_cap;
  int64_t marks[PK_MAX_MARKS]; /* stack heights at each open MARK */
  int n_marks;
  pk_value **memo;
  int64_t memo_cap, memo_count;
  pk_value *result;
} pk_parser;

/* ---- errors and allocation ------------------------------------------------------------- */

static int perr(const pk_parser *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(const pk_parser *p, int code, const char *fmt, ...) {
  char msg[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return pa_fail(code, "data.pkl offset %zu: %s", p->op_pos, msg);
}

static int oom(void) { return pa_fail(PA_ERR_NOMEM, "out of memory while unpickling"); }

/* Returns `arr` (elements of size `elem`) grown so that index need - 1 fits, new slots
 * zeroed; NULL (with the error set) when out of memory, `arr` then being left as it was. */
static void *grow(void *arr, int64_t *cap, int64_t need, size_t elem) {
  if (need <= *cap) return arr;
  int64_t c = *cap ? *cap : 16;
  while (c < need) c *= 2;
  char *n = realloc(arr, (size_t)c * elem);
  if (!n) {
    oom();
    return NULL;
  }
  memset(n + (size_t)*cap * elem, 0, (size_t)(c - *cap) * elem);
  *cap = c;
  return n;
}

static pk_value *new_value(pk_parser *p, pk_kind kind) {
  pk_doc *d = p->doc;
  pk_value **values = grow(d->values, &d->cap, d->n + 1, sizeof *values);
  if (!values) return NULL;
  d->values = values;
  pk_value *v = calloc(1, sizeof *v);
  if (!v) {
    oom();
    return NULL;
  }
  v->kind = kind;
  d->values[d->n++] = v;
  return v;
}

void pk_doc_free(pk_doc *doc) {
  if (!doc) return;
  for (int64_t i = 0; i < doc->n; i++) {
    pk_value *v = doc->values[i];
    if (v->kind == PK_STR) free(v->str.s);
    if (v->kind == PK_TUPLE || v->kind == PK_LIST) free(v->seq.items);
    if (v->kind == PK_DICT) {
      free(v->dict.keys);
      free(v->dict.vals);
    }
    free(v);
  }
  free(doc->values);
  free(doc);
}

static const char *kind_name(pk_kind k) {
  static const char *names[] = {"None",  "bool",     "int",      "float",  "str",   "tuple",
                                "list",  "dict",     "callable", "storage", "tensor"};
  return names[k];
}

/* ---- the stack, marks and memo ----------------------------------------------------------- */

static int push(pk_parser *p, pk_value *v) {
  if (!v) return PA_ERR_NOMEM;
  if (p->sp >= PK_MAX_STACK) return perr(p, PA_ERR_FORMAT, "stack deeper than %d", PK_MAX_STACK);
  pk_value **stack = grow(p->stack, &p->stack_cap, p->sp + 1, sizeof *stack);
  if (!stack) return PA_ERR_NOMEM;
  p->stack = stack;
  p->stack[p->sp++] = v;
  return PA_OK;
}

/* Items below the innermost MARK belong to an enclosing construct: ops may not pop them. */
static int64_t fence(const pk_parser *p) { return p->n_marks ? p->marks[p->n_marks - 1] : 0; }

/* Out-parameters are written on every path, so callers never read garbage. */
static int pop(pk_parser *p, pk_value **out) {
  *out = NULL;
  if (p->sp <= fence(p)) return perr(p, PA_ERR_FORMAT, "stack underflow");
  *out = p->stack[--p->sp];
  return PA_OK;
}

static int peek(pk_parser *p, pk_value **out) {
  *out = NULL;
  if (p->sp <= fence(p)) return perr(p, PA_ERR_FORMAT, "stack underflow");
  *out = p->stack[p->sp - 1];
  return PA_OK;
}

/* Closes the innermost MARK; its items are stack[*start .. sp). */
static int pop_mark(pk_parser *p, int64_t *start) {
  *start = p->sp;
  if (!p->n_marks) return perr(p, PA_ERR_FORMAT, "no open MARK");
  *start = p->marks[--p->n_marks];
  return PA_OK;
}

static int memo_put(pk_parser *p, uint64_t idx) {
  pk_value *v;
  int rc = peek(p, &v);
  if (rc) return rc;
  /* Picklers number memo slots 0, 1, 2, ...: an index past the file size is not one. */
  if (idx >= PK_MAX_MEMO || idx > p->len)
    return perr(p, PA_ERR_FORMAT, "memo index %llu out of range", (unsigned long long)idx);
  pk_value **memo = grow(p->memo, &p->memo_cap, (int64_t)idx + 1, sizeof *memo);
  if (!memo) return PA_ERR_NOMEM;
  p->memo = memo;
  if (!p->memo[idx]) p->memo_count++;
  p->memo[idx] = v;
  return PA_OK;
}

static int memo_get(pk_parser *p, uint64_t idx) {
  if (idx >= (uint64_t)p->memo_cap || !p->memo[idx])
    return perr(p, PA_ERR_FORMAT, "memo index %llu was never stored", (unsigned long long)idx);
  return push(p, p->memo[idx]);
}

/* ---- reading arguments ------------------------------------------------------------------- */

static int need(pk_parser *p, size_t n) {
  if (p->len - p->pos < n)
    return perr(p, PA_ERR_FORMAT, "truncated: opcode 0x%02x needs %zu argument bytes, %zu left",
                p->buf[p->op_pos], n, p->len - p->pos);
  return PA_OK;
}

/* Little-endian unsigned of n <= 8 bytes. */
static int read_le(pk_parser *p, size_t n, uint64_t *out) {
  *out = 0;
  int rc = need(p, n);
  if (rc) return rc;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= (uint64_t)p->buf[p->pos + i] << (8 * i);
  p->pos += n;
  *out = v;
  return PA_OK;
}

/* ---- constructing values ----------------------------------------------------------------- */

static int push_int(pk_parser *p, int64_t i) {
  pk_value *v = new_value(p, PK_INT);
  if (v) v->i = i;
  return push(p, v);
}

static int push_bool(pk_parser *p, bool b) {
  pk_value *v = new_value(p, PK_BOOL);
  if (v) v->b = b;
  return push(p, v);
}

static int push_string(pk_parser *p, size_t n) {
  int rc = need(p, n);
  if (rc) return rc;
  const uint8_t *s = p->buf + p->pos;
  /* Keys become C strings (tensor names): an embedded NUL would silently truncate one. */
  if (memchr(s, 0, n)) return perr(p, PA_ERR_FORMAT, "string contains a NUL byte");
  pk_value *v = new_value(p, PK_STR);
  if (!v) return PA_ERR_NOMEM;
  if (!(v->str.s = malloc(n + 1))) return oom();
  memcpy(v->str.s, s, n);
  v->str.s[n] = 0;
  v->str.len = n;
  p->pos += n;
  return push(p, v);
}

static int seq_append(pk_value *seq, pk_value *item) {
  pk_value **items = grow(seq->seq.items, &seq->seq.cap, seq->seq.n + 1, sizeof *items);
  if (!items) return PA_ERR_NOMEM;
  seq->seq.items = items;
  seq->seq.items[seq->seq.n++] = item;
  return PA_OK;
}

/* Duplicate keys are kept, not replaced: the loader refuses a duplicate tensor name, which
 * beats silently picking one of two weights a crafted file offers. */
static int dict_set(pk_value *d, pk_value *k, pk_value *v) {
  int64_t kcap = d->dict.cap, vcap = d->dict.cap; /* both arrays share one capacity */
  pk_value **keys = grow(d->dict.keys, &kcap, d->dict.n + 1, sizeof *keys);
  if (!keys) return PA_ERR_NOMEM;
  d->dict.keys = keys;
  pk_value **vals = grow(d->dict.vals, &vcap, d->dict.n + 1, sizeof *vals);
  if (!vals) return PA_ERR_NOMEM;
  d->dict.vals = vals;
  d->dict.cap = vcap;
  d->dict.keys[d->dict.n] = k;
  d->dict.vals[d->dict.n++] = v;
  return PA_OK;
}

/* Makes a tuple of the top `n` stack items (n = -1: everything above the innermost MARK). */
static int build_tuple(pk_parser *p, int n) {
  int64_t start;
  int rc;
  if (n < 0) {
    if ((rc = pop_mark(p, &start))) return rc;
  } else {
    if (p->sp - fence(p) < n) return perr(p, PA_ERR_FORMAT, "stack underflow");
    start = p->sp - n;
  }
  pk_value *t = new_value(p, PK_TUPLE);
  if (!t) return PA_ERR_NOMEM;
  for (int64_t i = start; i < p->sp; i++)
    if ((rc = seq_append(t, p->stack[i]))) return rc;
  p->sp = start;
  return push(p, t);
}

/* ---- GLOBAL: the allowlist --------------------------------------------------------------- */

typedef struct {
  const char *module, *name;
  pk_global_id id;
  pa_dtype dtype;
} allowed_global;

static const allowed_global ALLOWED[] = {
    {"collections", "OrderedDict", PK_G_ORDERED_DICT, PA_F32},
    {"torch._utils", "_rebuild_tensor_v2", PK_G_REBUILD_TENSOR_V2, PA_F32},
    {"torch._utils", "_rebuild_parameter", PK_G_REBUILD_PARAMETER, PA_F32},
    {"torch", "FloatStorage", PK_G_STORAGE_CLASS, PA_F32},
    {"torch", "HalfStorage", PK_G_STORAGE_CLASS, PA_F16},
    {"torch", "BFloat16Storage", PK_G_STORAGE_CLASS, PA_BF16},
    {"torch", "DoubleStorage", PK_G_STORAGE_CLASS, PA_F64},
    {"torch", "LongStorage", PK_G_STORAGE_CLASS, PA_I64},
    {"torch", "IntStorage", PK_G_STORAGE_CLASS, PA_I32},
    {"torch", "ByteStorage", PK_G_STORAGE_CLASS, PA_U8},
};

/* A copy of `s` safe to print: non-printable bytes become '?'. */
static void printable(char *dst, size_t cap, const char *s, size_t n) {
  size_t i = 0;
  for (; i < n && i + 1 < cap; i++) dst[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  dst[i] = 0;
}

static int push_global(pk_parser *p, const char *mod, size_t mod_len, const char *name,
                       size_t name_len) {
  for (size_t i = 0; i < sizeof ALLOWED / sizeof *ALLOWED; i++) {
    const allowed_global *a = &ALLOWED[i];
    if (strlen(a->module) != mod_len || memcmp(a->module, mod, mod_len) != 0) continue;
    if (strlen(a->name) != name_len || memcmp(a->name, name, name_len) != 0) continue;
    pk_value *v = new_value(p, PK_GLOBAL);
    if (v) {
      v->global.id = a->id;
      v->global.dtype = a->dtype;
    }
    return push(p, v);
  }
  char m[PK_MAX_GLOBAL_NAME + 1], n[PK_MAX_GLOBAL_NAME + 1];
  printable(m, sizeof m, mod, mod_len);
  printable(n, sizeof n, name, name_len);
  return perr(p, PA_ERR_UNSUPPORTED,
              "refusing GLOBAL '%s %s': only collections.OrderedDict, torch._utils tensor "
              "rebuilders and torch storage classes (Float, Half, BFloat16, Double, Long, Int, "
              "Byte) may be named",
              m, n);
}

/* Reads one "\n"-terminated GLOBAL operand line. */
static int read_line(pk_parser *p, const char **s, size_t *n) {
  *s = NULL;
  *n = 0;
  size_t avail = p->len - p->pos;
  if (avail > PK_MAX_GLOBAL_NAME + 1) avail = PK_MAX_GLOBAL_NAME + 1;
  const uint8_t *nl = memchr(p->buf + p->pos, '\n', avail);
  if (!nl) return perr(p, PA_ERR_FORMAT, "GLOBAL operand unterminated or longer than %d bytes",
                       PK_MAX_GLOBAL_NAME);
  *s = (const char *)p->buf + p->pos;
  *n = (size_t)(nl - (p->buf + p->pos));
  p->pos += *n + 1;
  return PA_OK;
}

static int op_global(pk_parser *p) {
  const char *mod, *name;
  size_t mod_len, name_len;
  int rc = read_line(p, &mod, &mod_len);
  if (!rc) rc = read_line(p, &name, &name_len);
  return rc ? rc : push_global(p, mod, mod_len, name, name_len);
}

static int op_stack_global(pk_parser *p) {
  pk_value *mod, *name;
  int rc = pop(p, &name);
  if (!rc) rc = pop(p, &mod);
  if (rc) return rc;
  if (mod->kind != PK_STR || name->kind != PK_STR)
    return perr(p, PA_ERR_FORMAT, "STACK_GLOBAL needs two strings");
  return push_global(p, mod->str.s, mod->str.len, name->str.s, name->str.len);
}

/* ---- REDUCE, BINPERSID, BUILD: the only places "calls" happen ----------------------------- */

static bool is_nonneg_int(const pk_value *v) { return v->kind == PK_INT && v->i >= 0; }

/* size/stride: tuples of non-negative ints of rank <= PA_MAX_DIMS. */
static int int_tuple(pk_parser *p, const pk_value *t, const char *what, int64_t *out, int *n) {
  if (t->kind != PK_TUPLE) return perr(p, PA_ERR_FORMAT, "tensor %s is a %s, not a tuple", what,
                                       kind_name(t->kind));
  if (t->seq.n > PA_MAX_DIMS)
    return perr(p, PA_ERR_UNSUPPORTED, "tensor of rank %lld (at most %d supported)",
                (long long)t->seq.n, PA_MAX_DIMS);
  for (int64_t i = 0; i < t->seq.n; i++) {
    if (!is_nonneg_int(t->seq.items[i]))
      return perr(p, PA_ERR_FORMAT, "tensor %s[%lld] is not a non-negative int", what,
                  (long long)i);
    out[i] = t->seq.items[i]->i;
  }
  *n = (int)t->seq.n;
  return PA_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
 * [, metadata]) -> a tensor descriptor. Bounds against the storage are checked by the
 * loader, which can name the tensor. */
static int rebuild_tensor(pk_parser *p, const pk_value *args) {
  if (args->seq.n != 6 && args->seq.n != 7)
    return perr(p, PA_ERR_FORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %lld",
                (long long)args->seq.n);
  pk_value **a = args->seq.items;
  if (a[0]->kind != PK_STORAGE) return perr(p, PA_ERR_FORMAT, "tensor storage is a %s",
                                            kind_name(a[0]->kind));
  if (!is_nonneg_int(a[1])) return perr(p, PA_ERR_FORMAT, "tensor storage_offset is invalid");
  if (a[4]->kind != PK_BOOL) return perr(p, PA_ERR_FORMAT, "tensor requires_grad is not a bool");
  for (int i = 5; i < args->seq.n; i++)
    if (a[i]->kind != PK_DICT && a[i]->kind != PK_NONE)
      return perr(p, PA_ERR_FORMAT, "tensor argument %d is a %s, expected a dict", i + 1,
                  kind_name(a[i]->kind));
  pk_value *v = new_value(p, PK_TENSOR);
  if (!v) return PA_ERR_NOMEM;
  pk_tensor *t = &v->tensor;
  int n_stride, rc;
  if ((rc = int_tuple(p, a[2], "size", t->size, &t->ndim))) return rc;
  if ((rc = int_tuple(p, a[3], "stride", t->stride, &n_stride))) return rc;
  if (n_stride != t->ndim)
    return perr(p, PA_ERR_FORMAT, "tensor size has %d dims but stride %d", t->ndim, n_stride);
  t->storage = a[0];
  t->offset = a[1]->i;
  t->pkl_offset = p->op_pos;
  return push(p, v);
}

static int op_reduce(pk_parser *p) {
  pk_value *fn, *args;
  int rc = pop(p, &args);
  if (!rc) rc = pop(p, &fn);
  if (rc) return rc;
  if (fn->kind != PK_GLOBAL) return perr(p, PA_ERR_UNSUPPORTED, "REDUCE calls a %s",
                                         kind_name(fn->kind));
  if (args->kind != PK_TUPLE) return perr(p, PA_ERR_FORMAT, "REDUCE arguments are not a tuple");
  switch (fn->global.id) {
    case PK_G_ORDERED_DICT:
      if (args->seq.n != 0) return perr(p, PA_ERR_UNSUPPORTED, "OrderedDict() with arguments");
      return push(p, new_value(p, PK_DICT));
    case PK_G_REBUILD_TENSOR_V2:
      return rebuild_tensor(p, args);
    case PK_G_REBUILD_PARAMETER: /* (data, requires_grad, backward_hooks): keep the data */
      if (args->seq.n != 3 || args->seq.items[0]->kind != PK_TENSOR)
        return perr(p, PA_ERR_FORMAT, "_rebuild_parameter needs (tensor, bool, hooks)");
      return push(p, args->seq.items[0]);
    case PK_G_STORAGE_CLASS:
      break;
  }
  return perr(p, PA_ERR_UNSUPPORTED, "REDUCE may not call a storage class");
}

static bool valid_storage_key(const pk_value *k) {
  if (k->kind != PK_STR || k->str.len == 0 || k->str.len > 64) return false;
  for (size_t i = 0; i < k->str.len; i++) {
    char c = k->str.s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
      return false;
  }
  return true;
}

/* BINPERSID: the only persistent ids torch.save writes are
 * ("storage", <storage class>, key, location, numel). */
static int op_persid(pk_parser *p) {
  pk_value *pid;
  int rc = pop(p, &pid);
  if (rc) return rc;
  if (pid->kind != PK_TUPLE || pid->seq.n != 5)
    return perr(p, PA_ERR_UNSUPPORTED, "persistent id is not a (\"storage\", ...) 5-tuple");
  pk_value **a = pid->seq.items;
  if (a[0]->kind != PK_STR || strcmp(a[0]->str.s, "storage") != 0)
    return perr(p, PA_ERR_UNSUPPORTED, "persistent id is not a (\"storage\", ...) 5-tuple");
  if (a[1]->kind != PK_GLOBAL || a[1]->global.id != PK_G_STORAGE_CLASS)
    return perr(p, PA_ERR_FORMAT, "persistent id names no storage class");
  if (!valid_storage_key(a[2]))
    return perr(p, PA_ERR_FORMAT, "persistent id has an invalid storage key");
  if (a[3]->kind != PK_STR || !is_nonneg_int(a[4]))
    return perr(p, PA_ERR_FORMAT, "persistent id has an invalid location or numel");
  pk_value *v = new_value(p, PK_STORAGE);
  if (!v) return PA_ERR_NOMEM;
  v->storage.dtype = a[1]->global.dtype;
  v->storage.key = a[2]->str.s;
  v->storage.numel = a[4]->i;
  return push(p, v);
}

/* BUILD sets instance state. torch.save emits it only for an OrderedDict's attributes (a
 * state_dict's `_metadata` versions), which a weight loader does not need. */
static int op_build(pk_parser *p) {
  pk_value *state, *obj;
  int rc = pop(p, &state);
  if (!rc) rc = peek(p, &obj);
  if (rc) return rc;
  if (obj->kind != PK_DICT)
    return perr(p, PA_ERR_UNSUPPORTED, "BUILD on a %s (only dict state is accepted)",
                kind_name(obj->kind));
  return PA_OK;
}

/* ---- containers -------------------------------------------------------------------------- */

/* The container sitting just below a closed MARK; it must be above the enclosing fence. */
static int container_below(pk_parser *p, int64_t start, pk_kind kind, pk_value **out) {
  *out = NULL;
  if (start - 1 < fence(p)) return perr(p, PA_ERR_FORMAT, "stack underflow");
  *out = p->stack[start - 1];
  if ((*out)->kind != kind)
    return perr(p, PA_ERR_FORMAT, "expected a %s under the items, found a %s", kind_name(kind),
                kind_name((*out)->kind));
  return PA_OK;
}

static int op_setitems(pk_parser *p, bool one) {
  int64_t start = p->sp - 2;
  int rc = PA_OK;
  if (one) {
    if (p->sp - fence(p) < 2) return perr(p, PA_ERR_FORMAT, "stack underflow");
  } else if ((rc = pop_mark(p, &start))) {
    return rc;
  }
  if ((p->sp - start) % 2) return perr(p, PA_ERR_FORMAT, "SETITEMS with an odd item count");
  pk_value *d;
  if ((rc = container_below(p, start, PK_DICT, &d))) return rc;
  for (int64_t i = start; i < p->sp && !rc; i += 2) rc = dict_set(d, p->stack[i], p->stack[i + 1]);
  p->sp = start;
  return rc;
}

static int op_appends(pk_parser *p, bool one) {
  int64_t start = p->sp - 1;
  int rc = PA_OK;
  if (one) {
    if (p->sp - fence(p) < 1) return perr(p, PA_ERR_FORMAT, "stack underflow");
  } else if ((rc = pop_mark(p, &start))) {
    return rc;
  }
  pk_value *l;
  if ((rc = container_below(p, start, PK_LIST, &l))) return rc;
  for (int64_t i = start; i < p->sp && !rc; i++) rc = seq_append(l, p->stack[i]);
  p->sp = start;
  return rc;
}

/* ---- the opcode loop --------------------------------------------------------------------- */

static int op_long1(pk_parser *p) {
  uint64_t n, u;
  int rc = read_le(p, 1, &n);
  if (rc) return rc;
  if (n > 8) return perr(p, PA_ERR_UNSUPPORTED, "LONG1 integer of %llu bytes (max 8)",
                         (unsigned long long)n);
  if ((rc = read_le(p, (size_t)n, &u))) return rc;
  if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~0ull << (8 * n); /* sign-extend */
  return push_int(p, (int64_t)u);
}

static int op_binfloat(pk_parser *p) {
  int rc = need(p, 8);
  if (rc) return rc;
  uint64_t u = 0;
  for (int i = 0; i < 8; i++) u = u << 8 | p->buf[p->pos + (size_t)i]; /* big-endian */
  p->pos += 8;
  pk_value *v = new_value(p, PK_FLOAT);
  if (v) memcpy(&v->f, &u, 8);
  return push(p, v);
}

static int op_mark(pk_parser *p) {
  if (p->n_marks >= PK_MAX_MARKS)
    return perr(p, PA_ERR_FORMAT, "MARK nesting deeper than %d", PK_MAX_MARKS);
  p->marks[p->n_marks++] = p->sp;
  return PA_OK;
}

static int op_stop(pk_parser *p) {
  if (p->n_marks || p->sp != 1)
    return perr(p, PA_ERR_FORMAT, "STOP with %lld stack items and %d open MARKs",
                (long long)p->sp, p->n_marks);
  p->result = p->stack[0];
  return PA_OK;
}

/* Operand-sized reads: `n` little-endian bytes into *u. */
#define ARG(n)                          \
  do {                                  \
    if ((rc = read_le(p, (n), &u))) return rc; \
  } while (0)

static int step(pk_parser *p, uint8_t op) {
  uint64_t u;
  int rc;
  switch (op) {
    case 0x80: /* PROTO */
      ARG(1);
      if (u > 5) return perr(p, PA_ERR_UNSUPPORTED, "pickle protocol %llu", (unsigned long long)u);
      return PA_OK;
    case 0x95: /* FRAME: a length hint; the data follows inline */
      ARG(8);
      return u <= p->len - p->pos ? PA_OK : perr(p, PA_ERR_FORMAT, "truncated FRAME");
    case '(': return op_mark(p);
    case '.': return op_stop(p);
    case '}': return push(p, new_value(p, PK_DICT));
    case ']': return push(p, new_value(p, PK_LIST));
    case ')': return build_tuple(p, 0);
    case 0x85: return build_tuple(p, 1);
    case 0x86: return build_tuple(p, 2);
    case 0x87: return build_tuple(p, 3);
    case 't': return build_tuple(p, -1);
    case 'N': return push(p, new_value(p, PK_NONE));
    case 0x88: return push_bool(p, true);
    case 0x89: return push_bool(p, false);
    case 'J': ARG(4); return push_int(p, (int32_t)(uint32_t)u);
    case 'K': ARG(1); return push_int(p, (int64_t)u);
    case 'M': ARG(2); return push_int(p, (int64_t)u);
    case 0x8a: return op_long1(p);
    case 'G': return op_binfloat(p);
    case 'X': ARG(4); return push_string(p, (size_t)u);
    case 0x8c: ARG(1); return push_string(p, (size_t)u);
    case 'U': ARG(1); return push_string(p, (size_t)u);
    case 'T':
      ARG(4);
      if ((int32_t)(uint32_t)u < 0) return perr(p, PA_ERR_FORMAT, "negative BINSTRING length");
      return push_string(p, (size_t)u);
    case 'q': ARG(1); return memo_put(p, u);
    case 'r': ARG(4); return memo_put(p, u);
    case 0x94: return memo_put(p, (uint64_t)p->memo_count); /* MEMOIZE */
    case 'h': ARG(1); return memo_get(p, u);
    case 'j': ARG(4); return memo_get(p, u);
    case 's': return op_setitems(p, true);
    case 'u': return op_setitems(p, false);
    case 'a': return op_appends(p, true);
    case 'e': return op_appends(p, false);
    case 'c': return op_global(p);
    case 0x93: return op_stack_global(p);
    case 'R': return op_reduce(p);
    case 'Q': return op_persid(p);
    case 'b': return op_build(p);
  }
  if (op >= 0x20 && op < 0x7f)
    return perr(p, PA_ERR_UNSUPPORTED, "opcode 0x%02x ('%c') is not supported", op, op);
  return perr(p, PA_ERR_UNSUPPORTED, "opcode 0x%02x is not supported", op);
}
#undef ARG

int pk_parse(const uint8_t *buf, size_t len, pk_doc **doc, const pk_value **root) {
  pk_parser p = {.buf = buf, .len = len};
  int rc = PA_OK;
  if (!(p.doc = calloc(1, sizeof *p.doc))) return oom();
  while (!p.result && p.pos < len && !rc) {
    p.op_pos = p.pos;
    rc = step(&p, buf[p.pos++]);
  }
  if (!rc && !p.result) {
    p.op_pos = len;
    rc = perr(&p, PA_ERR_FORMAT, "truncated: no STOP opcode");
  }
  free(p.stack);
  free(p.memo);
  if (rc) {
    pk_doc_free(p.doc);
    return rc;
  }
  *doc = p.doc;
  *root = p.result;
  return PA_OK;
}

/* ---- helpers for the loader -------------------------------------------------------------- */

int pk_tensor_extent(const pk_tensor *t, int64_t *extent) {
  int64_t last = t->offset; /* index of the furthest element */
  for (int i = 0; i < t->ndim; i++) {
    if (t->size[i] == 0) {
      *extent = 0;
      return PA_OK;
    }
    int64_t step;
    if (__builtin_mul_overflow(t->size[i] - 1, t->stride[i], &step) ||
        __builtin_add_overflow(last, step, &last))
      return pa_fail(PA_ERR_FORMAT, "tensor view overflows int64");
  }
  if (__builtin_add_overflow(last, 1, extent))
    return pa_fail(PA_ERR_FORMAT, "tensor view overflows int64");
  return PA_OK;
}

const pk_value *pk_dict_get(const pk_value *dict, const char *key) {
  if (dict->kind != PK_DICT) return NULL;
  for (int64_t i = dict->dict.n - 1; i >= 0; i--) {
    const pk_value *k = dict->dict.keys[i];
    if (k->kind == PK_STR && strcmp(k->str.s, key) == 0) return dict->dict.vals[i];
  }
  return NULL;
}

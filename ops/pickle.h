/* An allowlisted unpickler for the `data.pkl` of a torch.save zip checkpoint.
 *
 * Pickle is a program for a stack machine that may call any Python callable. This reader
 * implements only the opcodes that torch.save emits for (nested) dicts of tensors and
 * knows only a handful of callables (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
 * torch._utils._rebuild_parameter and the typed storage classes). Anything else is refused
 * with PA_ERR_UNSUPPORTED naming the opcode or callable and its byte offset in data.pkl.
 * Nothing is executed: "calling" an allowed callable just builds a descriptor value.
 *
 * Every value lives in an arena owned by the pk_doc, so shared references (memo gets),
 * aliasing and even reference cycles (a list appended to itself) need no ownership rules. */
#ifndef PAELLA_OPS_PICKLE_H
#define PAELLA_OPS_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/tensor.h"

typedef enum {
  PK_NONE,
  PK_BOOL,
  PK_INT,
  PK_FLOAT,
  PK_STR,     /* unicode or byte string, NUL-terminated copy */
  PK_TUPLE,
  PK_LIST,
  PK_DICT,    /* dict and OrderedDict alike; keys in insertion order */
  PK_GLOBAL,  /* one of the allowlisted callables */
  PK_STORAGE, /* a persistent id ("storage", <class>, key, location, numel) */
  PK_TENSOR,  /* the result of _rebuild_tensor_v2: a (strided) view of a storage */
} pk_kind;

typedef enum {
  PK_G_ORDERED_DICT,
  PK_G_REBUILD_TENSOR_V2,
  PK_G_REBUILD_PARAMETER,
  PK_G_STORAGE_CLASS, /* dtype in pk_value.global.dtype */
} pk_global_id;

typedef struct pk_value pk_value;

typedef struct {
  const pk_value *storage; /* PK_STORAGE */
  int64_t offset;          /* in elements */
  int ndim;
  int64_t size[PA_MAX_DIMS], stride[PA_MAX_DIMS]; /* strides in elements, >= 0 */
  size_t pkl_offset;       /* where the REDUCE that built it sits, for error messages */
} pk_tensor;

struct pk_value {
  pk_kind kind;
  union {
    bool b;
    int64_t i;
    double f;
    struct {
      char *s;
      size_t len;
    } str;
    struct {
      pk_value **items;
      int64_t n, cap;
    } seq; /* PK_TUPLE, PK_LIST */
    struct {
      pk_value **keys, **vals;
      int64_t n, cap;
    } dict;
    struct {
      pk_global_id id;
      pa_dtype dtype;
    } global;
    struct {
      pa_dtype dtype;
      const char *key; /* archive entry <prefix>/data/<key> */
      int64_t numel;
    } storage;
    pk_tensor tensor;
  };
};

typedef struct pk_doc pk_doc;

/* Parses `len` bytes of data.pkl. On success *doc owns every value and *root is the
 * unpickled object. Errors name the byte offset in data.pkl; the caller adds the file. */
int pk_parse(const uint8_t *buf, size_t len, pk_doc **doc, const pk_value **root);
void pk_doc_free(pk_doc *doc);

/* Number of elements a tensor view spans in its storage: offset + 1 + sum (size-1)*stride
 * (0 for an empty tensor). Fails on int64 overflow. */
int pk_tensor_extent(const pk_tensor *t, int64_t *extent);

/* Looks up a string key in a PK_DICT; NULL when absent. */
const pk_value *pk_dict_get(const pk_value *dict, const char *key);

#endif

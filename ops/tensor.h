/* The tensor type: a dtype, up to 5 dims (C order, last index fastest) and a data pointer.
 * Activations are NHWC / (rows, features). A tensor either owns its buffer (freed by
 * pa_tensor_free) or borrows it (memory-mapped weights, views). `device` says where the
 * bytes live: host memory for the CPU backend, device memory for CUDA. */
#ifndef PAELLA_OPS_TENSOR_H
#define PAELLA_OPS_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PA_MAX_DIMS 5

typedef enum { PA_F32, PA_F64, PA_F16, PA_BF16, PA_I64, PA_I32, PA_U8, PA_DTYPE_COUNT } pa_dtype;
typedef enum { PA_HOST = 0, PA_CUDA = 1 } pa_device;

typedef struct pa_tensor {
  pa_dtype dtype;
  int ndim;
  int64_t shape[PA_MAX_DIMS];
  void *data;
  pa_device device;
  bool owns_data;
} pa_tensor;

size_t pa_dtype_size(pa_dtype dt);
const char *pa_dtype_name(pa_dtype dt);         /* "F32", "BF16", ... (safetensors spelling) */
int pa_dtype_from_name(const char *name, pa_dtype *out);

int64_t pa_numel(const pa_tensor *t);
size_t pa_nbytes(const pa_tensor *t);
/* Product of all dims but the last: the number of rows of a (..., C) tensor. */
int64_t pa_rows(const pa_tensor *t);
static inline int64_t pa_last(const pa_tensor *t) { return t->shape[t->ndim - 1]; }

/* "[2, 24, 8]" into buf; returns buf. */
char *pa_shape_str(const pa_tensor *t, char *buf, size_t cap);
bool pa_same_shape(const pa_tensor *a, const pa_tensor *b);

/* Host tensors. pa_tensor_new zero-fills; returns NULL (with pa_fail set) on OOM. */
pa_tensor *pa_tensor_new(pa_dtype dt, int ndim, const int64_t *shape);
pa_tensor *pa_tensor_new_2d(pa_dtype dt, int64_t d0, int64_t d1);
pa_tensor *pa_tensor_new_like(const pa_tensor *t);
/* A borrowed view (no copy) of `data`. */
pa_tensor *pa_tensor_wrap(pa_dtype dt, int ndim, const int64_t *shape, void *data);
pa_tensor *pa_tensor_clone(const pa_tensor *t);
void pa_tensor_free(pa_tensor *t);
/* Reinterpret the shape (same numel); in place. */
int pa_tensor_reshape(pa_tensor *t, int ndim, const int64_t *shape);

/* Converts any float dtype (F32/F64/F16/BF16) to a new F32 host tensor; I64/I32 are copied
 * as integers into F32 only if `allow_int` (never needed by the networks). */
pa_tensor *pa_tensor_to_f32(const pa_tensor *t);
pa_tensor *pa_tensor_to_dtype(const pa_tensor *t, pa_dtype dt);

float pa_bf16_to_f32(uint16_t h);
uint16_t pa_f32_to_bf16(float f); /* round to nearest even */
float pa_f16_to_f32(uint16_t h);
uint16_t pa_f32_to_f16(float f);

/* NCHW <-> NHWC for 4-d host tensors of 4- or 8-byte elements. */
pa_tensor *pa_nchw_to_nhwc(const pa_tensor *t);
pa_tensor *pa_nhwc_to_nchw(const pa_tensor *t);

#endif

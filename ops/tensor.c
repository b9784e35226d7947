#include "ops/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/error.h"

static const struct {
  const char *name;
  size_t size;
} dtype_info[PA_DTYPE_COUNT] = {
    [PA_F32] = {"F32", 4}, [PA_F64] = {"F64", 8}, [PA_F16] = {"F16", 2}, [PA_BF16] = {"BF16", 2},
    [PA_I64] = {"I64", 8}, [PA_I32] = {"I32", 4}, [PA_U8] = {"U8", 1},
};

size_t pa_dtype_size(pa_dtype dt) { return dt < PA_DTYPE_COUNT ? dtype_info[dt].size : 0; }
const char *pa_dtype_name(pa_dtype dt) { return dt < PA_DTYPE_COUNT ? dtype_info[dt].name : "?"; }

int pa_dtype_from_name(const char *name, pa_dtype *out) {
  for (int i = 0; i < PA_DTYPE_COUNT; i++)
    if (strcmp(name, dtype_info[i].name) == 0) {
      *out = (pa_dtype)i;
      return PA_OK;
    }
  return pa_fail(PA_ERR_UNSUPPORTED, "unsupported dtype '%s'", name);
}

int64_t pa_numel(const pa_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

size_t pa_nbytes(const pa_tensor *t) { return (size_t)pa_numel(t) * pa_dtype_size(t->dtype); }

int64_t pa_rows(const pa_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
  return n;
}

char *pa_shape_str(const pa_tensor *t, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < t->ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

bool pa_same_shape(const pa_tensor *a, const pa_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

static pa_tensor *tensor_header(pa_dtype dt, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > PA_MAX_DIMS) {
    pa_fail(PA_ERR_SHAPE, "tensor rank %d exceeds %d", ndim, PA_MAX_DIMS);
    return NULL;
  }
  pa_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    pa_fail(PA_ERR_NOMEM, "out of memory (tensor header)");
    return NULL;
  }
  t->dtype = dt;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      free(t);
      pa_fail(PA_ERR_SHAPE, "negative dimension %lld", (long long)shape[i]);
      return NULL;
    }
    t->shape[i] = shape[i];
  }
  return t;
}

pa_tensor *pa_tensor_new(pa_dtype dt, int ndim, const int64_t *shape) {
  pa_tensor *t = tensor_header(dt, ndim, shape);
  if (!t) return NULL;
  size_t bytes = pa_nbytes(t);
  /* 64-byte alignment keeps BLAS and SIMD loops on their fast paths. */
  size_t alloc = (bytes + 63) / 64 * 64;
  t->data = aligned_alloc(64, alloc ? alloc : 64);
  if (!t->data) {
    free(t);
    pa_fail(PA_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  memset(t->data, 0, bytes);
  t->owns_data = true;
  return t;
}

pa_tensor *pa_tensor_new_2d(pa_dtype dt, int64_t d0, int64_t d1) {
  int64_t s[2] = {d0, d1};
  return pa_tensor_new(dt, 2, s);
}

pa_tensor *pa_tensor_new_like(const pa_tensor *t) { return pa_tensor_new(t->dtype, t->ndim, t->shape); }

pa_tensor *pa_tensor_wrap(pa_dtype dt, int ndim, const int64_t *shape, void *data) {
  pa_tensor *t = tensor_header(dt, ndim, shape);
  if (t) t->data = data;
  return t;
}

pa_tensor *pa_tensor_clone(const pa_tensor *t) {
  pa_tensor *c = pa_tensor_new_like(t);
  if (c) memcpy(c->data, t->data, pa_nbytes(t));
  return c;
}

void pa_tensor_free(pa_tensor *t) {
  if (!t) return;
  if (t->owns_data) free(t->data);
  free(t);
}

int pa_tensor_reshape(pa_tensor *t, int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  if (ndim > PA_MAX_DIMS || n != pa_numel(t))
    return pa_fail(PA_ERR_SHAPE, "cannot reshape %lld elements to rank %d / %lld elements",
                   (long long)pa_numel(t), ndim, (long long)n);
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  return PA_OK;
}

float pa_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t pa_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float pa_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: value = man * 2^-24 */
      float f = ldexpf((float)man, -24);
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t pa_f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  float a = fabsf(f);
  if (isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;
  if (a < 6.103515625e-05f) { /* subnormal range: round to a multiple of 2^-24 */
    return sign | (uint16_t)lrintf(a * 16777216.0f);
  }
  uint32_t exp = ((u >> 23) & 0xff) - 112, man = u & 0x7fffff;
  uint32_t h = (exp << 10) | (man >> 13), rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return sign | (uint16_t)h;
}

pa_tensor *pa_tensor_to_dtype(const pa_tensor *t, pa_dtype dt) {
  pa_tensor *o = pa_tensor_new(dt, t->ndim, t->shape);
  if (!o) return NULL;
  int64_t n = pa_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v;
    switch (t->dtype) {
      case PA_F32: v = ((const float *)t->data)[i]; break;
      case PA_F64: v = ((const double *)t->data)[i]; break;
      case PA_F16: v = pa_f16_to_f32(((const uint16_t *)t->data)[i]); break;
      case PA_BF16: v = pa_bf16_to_f32(((const uint16_t *)t->data)[i]); break;
      case PA_I64: v = (double)((const int64_t *)t->data)[i]; break;
      case PA_I32: v = ((const int32_t *)t->data)[i]; break;
      case PA_U8: v = ((const uint8_t *)t->data)[i]; break;
      default: pa_tensor_free(o); pa_fail(PA_ERR_UNSUPPORTED, "bad dtype"); return NULL;
    }
    switch (dt) {
      case PA_F32: ((float *)o->data)[i] = (float)v; break;
      case PA_F64: ((double *)o->data)[i] = v; break;
      case PA_F16: ((uint16_t *)o->data)[i] = pa_f32_to_f16((float)v); break;
      case PA_BF16: ((uint16_t *)o->data)[i] = pa_f32_to_bf16((float)v); break;
      case PA_I64: ((int64_t *)o->data)[i] = (int64_t)v; break;
      case PA_I32: ((int32_t *)o->data)[i] = (int32_t)v; break;
      case PA_U8: ((uint8_t *)o->data)[i] = (uint8_t)v; break;
      default: break;
    }
  }
  return o;
}

pa_tensor *pa_tensor_to_f32(const pa_tensor *t) { return pa_tensor_to_dtype(t, PA_F32); }

/* Generic 4-d permutation for 4- or 8-byte elements: out[i0,i1,i2,i3] = in[...perm...]. */
static pa_tensor *permute4(const pa_tensor *t, const int perm[4]) {
  size_t es = pa_dtype_size(t->dtype);
  if (t->ndim != 4 || (es != 4 && es != 8)) {
    pa_fail(PA_ERR_SHAPE, "layout change needs a 4-d tensor of 4/8-byte elements");
    return NULL;
  }
  int64_t os[4], is[4];
  for (int i = 0; i < 4; i++) os[i] = t->shape[perm[i]];
  is[3] = 1;
  for (int i = 2; i >= 0; i--) is[i] = is[i + 1] * t->shape[i + 1];
  pa_tensor *o = pa_tensor_new(t->dtype, 4, os);
  if (!o) return NULL;
  int64_t idx = 0;
  for (int64_t a = 0; a < os[0]; a++)
    for (int64_t b = 0; b < os[1]; b++)
      for (int64_t c = 0; c < os[2]; c++)
        for (int64_t d = 0; d < os[3]; d++, idx++) {
          int64_t src = a * is[perm[0]] + b * is[perm[1]] + c * is[perm[2]] + d * is[perm[3]];
          memcpy((char *)o->data + idx * es, (const char *)t->data + src * es, es);
        }
  return o;
}

pa_tensor *pa_nchw_to_nhwc(const pa_tensor *t) { return permute4(t, (const int[4]){0, 2, 3, 1}); }
pa_tensor *pa_nhwc_to_nchw(const pa_tensor *t) { return permute4(t, (const int[4]){0, 3, 1, 2}); }

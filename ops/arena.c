/* The planned activation arena (ops/arena.h). A recording pass logs, per allocation, its
 * size and the event counts at which it was allocated and released; planning places the
 * largest first, each at the lowest aligned offset that overlaps no placed intermediate
 * alive at the same time. */
#include "ops/arena.h"

#include <stdlib.h>
#include <string.h>

#include "ops/error.h"

#define ALIGN 256 /* bytes: keeps every view aligned for vector loads and cuBLASLt */

typedef struct {
  size_t bytes, offset;
  long born, died; /* event counts; died = LONG_MAX while alive */
} slot;

typedef struct {
  int64_t key[PA_ARENA_MAX_KEY];
  int nkey;
  slot *slots;
  int n;
  pa_tensor *buffer;   /* one backend allocation */
  pa_tensor *headers;  /* n view headers, reused by every pass */
  long stamp;          /* planning order, for eviction */
} plan;

struct pa_arena {
  pa_backend *be;
  plan plans[PA_ARENA_PLANS];
  long stamps;
  /* the pass in progress */
  plan *replay;        /* plan being replayed, or NULL when recording / fallen back */
  bool recording, fell_back;
  int64_t key[PA_ARENA_MAX_KEY];
  int nkey;
  slot *rec;           /* recording: slots so far */
  pa_tensor **rec_t;   /* recording: the tensor of each slot (to find it on release) */
  int n_rec, cap_rec, next;
  long events;
};

pa_arena *pa_arena_new(pa_backend *be) {
  pa_arena *a = calloc(1, sizeof *a);
  if (!a) pa_fail(PA_ERR_NOMEM, "arena: out of memory");
  if (a) a->be = be;
  return a;
}

static void plan_clear(pa_backend *be, plan *p) {
  free(p->slots);
  free(p->headers);
  if (p->buffer) be->release(be, p->buffer);
  memset(p, 0, sizeof *p);
}

void pa_arena_free(pa_arena *a) {
  if (!a) return;
  for (int i = 0; i < PA_ARENA_PLANS; i++) plan_clear(a->be, &a->plans[i]);
  free(a->rec);
  free(a->rec_t);
  free(a);
}

size_t pa_arena_bytes(const pa_arena *a) {
  size_t n = 0;
  for (int i = 0; i < PA_ARENA_PLANS; i++) n += a->plans[i].buffer ? pa_nbytes(a->plans[i].buffer) : 0;
  return n;
}

static plan *find_plan(pa_arena *a, const int64_t *key, int nkey) {
  for (int i = 0; i < PA_ARENA_PLANS; i++)
    if (a->plans[i].buffer && a->plans[i].nkey == nkey && !memcmp(a->plans[i].key, key, (size_t)nkey * sizeof *key))
      return &a->plans[i];
  return NULL;
}

int pa_arena_begin(pa_arena *a, const int64_t *key, int nkey) {
  if (nkey > PA_ARENA_MAX_KEY) return pa_fail(PA_ERR_INVALID, "arena: key of %d values", nkey);
  memcpy(a->key, key, (size_t)nkey * sizeof *key);
  a->nkey = nkey;
  a->replay = find_plan(a, key, nkey);
  a->recording = !a->replay;
  a->fell_back = false;
  a->n_rec = a->next = 0;
  a->events = 0;
  return PA_OK;
}

static bool is_view(const pa_arena *a, const pa_tensor *t) {
  for (int i = 0; i < PA_ARENA_PLANS; i++) {
    const plan *p = &a->plans[i];
    if (p->headers && t >= p->headers && t < p->headers + p->n) return true;
  }
  return false;
}

static size_t bytes_of(pa_dtype dt, int ndim, const int64_t *shape) {
  size_t n = pa_dtype_size(dt);
  for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
  return n;
}

static int record(pa_arena *a, pa_tensor *t) {
  if (a->n_rec == a->cap_rec) {
    int cap = a->cap_rec ? 2 * a->cap_rec : 256;
    slot *s = realloc(a->rec, (size_t)cap * sizeof *s);
    if (s) a->rec = s;
    pa_tensor **ts = realloc(a->rec_t, (size_t)cap * sizeof *ts);
    if (ts) a->rec_t = ts;
    if (!s || !ts) return pa_fail(PA_ERR_NOMEM, "arena: out of memory");
    a->cap_rec = cap;
  }
  a->rec[a->n_rec] = (slot){.bytes = pa_nbytes(t), .born = a->events++, .died = -1};
  a->rec_t[a->n_rec++] = t;
  return PA_OK;
}

pa_tensor *pa_arena_alloc(pa_arena *a, pa_dtype dt, int ndim, const int64_t *shape) {
  plan *p = a->replay;
  if (p && !a->fell_back && a->next < p->n && p->slots[a->next].bytes == bytes_of(dt, ndim, shape)) {
    pa_tensor *h = &p->headers[a->next];
    *h = (pa_tensor){.dtype = dt, .ndim = ndim, .device = p->buffer->device,
                     .data = (char *)p->buffer->data + p->slots[a->next].offset};
    memcpy(h->shape, shape, (size_t)ndim * sizeof *shape);
    a->next++;
    return h;
  }
  if (p) a->fell_back = true; /* the pass departs from its plan: plan it again */
  pa_tensor *t = a->be->alloc(a->be, dt, ndim, shape);
  if (t && a->recording && record(a, t)) {
    a->be->release(a->be, t);
    return NULL;
  }
  return t;
}

void pa_arena_release(pa_arena *a, pa_tensor *t) {
  if (!t || is_view(a, t)) return;
  if (a->recording)
    for (int i = a->n_rec - 1; i >= 0; i--)
      if (a->rec_t[i] == t && a->rec[i].died < 0) {
        a->rec[i].died = a->events++;
        a->rec_t[i] = NULL;
        break;
      }
  a->be->release(a->be, t);
}

static bool overlap(const slot *x, const slot *y) {
  bool live = x->born < y->died && y->born < x->died;
  return live && x->offset < y->offset + y->bytes && y->offset < x->offset + x->bytes;
}

static int by_size_desc(const void *l, const void *r) {
  const slot *x = *(const slot *const *)l, *y = *(const slot *const *)r;
  return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : (x->born > y->born) - (x->born < y->born);
}

/* Offsets for every recorded slot; returns the buffer size. */
static size_t place(slot *s, int n) {
  slot **order = malloc((size_t)(n ? n : 1) * sizeof *order);
  if (!order) return 0;
  for (int i = 0; i < n; i++) order[i] = &s[i];
  qsort(order, (size_t)n, sizeof *order, by_size_desc);
  size_t total = ALIGN;
  for (int i = 0; i < n; i++) {
    slot *x = order[i];
    x->offset = 0;
    for (bool moved = true; moved;) { /* the lowest offset clear of every placed, live slot */
      moved = false;
      for (int k = 0; k < i; k++)
        if (overlap(x, order[k])) {
          x->offset = (order[k]->offset + order[k]->bytes + ALIGN - 1) / ALIGN * ALIGN;
          moved = true;
        }
    }
    if (x->offset + x->bytes > total) total = x->offset + x->bytes;
  }
  free(order);
  return total;
}

static plan *free_plan(pa_arena *a) {
  plan *oldest = &a->plans[0];
  for (int i = 0; i < PA_ARENA_PLANS; i++) {
    if (!a->plans[i].buffer) return &a->plans[i];
    if (a->plans[i].stamp < oldest->stamp) oldest = &a->plans[i];
  }
  plan_clear(a->be, oldest);
  return oldest;
}

int pa_arena_end(pa_arena *a) {
  plan *p = a->replay;
  a->replay = NULL;
  if (p && (a->fell_back || a->next != p->n)) plan_clear(a->be, p); /* departed: plan it next time */
  if (!a->recording || a->n_rec == 0) return PA_OK;
  a->recording = false;
  for (int i = 0; i < a->n_rec; i++)
    if (a->rec[i].died < 0) a->rec[i].died = a->events; /* kept past the pass: never shared */
  if (find_plan(a, a->key, a->nkey)) return PA_OK;
  p = free_plan(a);
  p->slots = malloc((size_t)a->n_rec * sizeof *p->slots);
  p->headers = calloc((size_t)a->n_rec, sizeof *p->headers);
  if (!p->slots || !p->headers) {
    plan_clear(a->be, p);
    return pa_fail(PA_ERR_NOMEM, "arena: out of memory");
  }
  memcpy(p->slots, a->rec, (size_t)a->n_rec * sizeof *p->slots);
  p->n = a->n_rec;
  size_t total = place(p->slots, p->n);
  if (!total || !(p->buffer = a->be->alloc(a->be, PA_U8, 1, (const int64_t[]){(int64_t)total}))) {
    plan_clear(a->be, p);
    return pa_fail(PA_ERR_NOMEM, "arena: cannot allocate %zu bytes", total);
  }
  memcpy(p->key, a->key, sizeof p->key);
  p->nkey = a->nkey;
  p->stamp = ++a->stamps;
  return PA_OK;
}

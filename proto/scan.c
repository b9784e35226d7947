/* Untrusted msgpack bytes -> object tree. msgpack-c allocates n * sizeof(msgpack_object)
 * for an array header that declares n elements before reading any of them, so a 5-byte
 * message could ask for 64 GiB. pw_scan_msgpack walks the bytes first, without allocating,
 * and rejects anything whose declared lengths exceed what is actually there; only then does
 * msgpack_unpack_next build the tree, whose size is now bounded by the input. */
#include <string.h>

#include "proto/internal.h"

static uint64_t read_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* What one msgpack header says: how many header bytes follow the type byte, and whether
 * the value then carries a payload of `len` bytes or `len` child objects. */
typedef struct {
  int len_bytes;   /* bytes of the big-endian length/payload field after the type byte */
  int fixed;       /* payload bytes with no length field (numbers), or -1 */
  int kind;        /* 0 scalar, 1 str/bin (len bytes), 2 array (len items), 3 map (2*len) */
  uint32_t inline_len;
} header;

static int classify(uint8_t b, header *h, pw_error *err) {
  *h = (header){0, 0, 0, 0};
  if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return 0;
  if (b >= 0x80 && b <= 0x8f) { h->kind = 3; h->inline_len = b & 0x0f; return 0; }
  if (b >= 0x90 && b <= 0x9f) { h->kind = 2; h->inline_len = b & 0x0f; return 0; }
  if (b >= 0xa0 && b <= 0xbf) { h->kind = 1; h->inline_len = b & 0x1f; return 0; }
  switch (b) {
    case 0xc4: case 0xd9: h->kind = 1; h->len_bytes = 1; return 0;
    case 0xc5: case 0xda: h->kind = 1; h->len_bytes = 2; return 0;
    case 0xc6: case 0xdb: h->kind = 1; h->len_bytes = 4; return 0;
    case 0xca: h->fixed = 4; return 0;
    case 0xcb: h->fixed = 8; return 0;
    case 0xcc: case 0xd0: h->fixed = 1; return 0;
    case 0xcd: case 0xd1: h->fixed = 2; return 0;
    case 0xce: case 0xd2: h->fixed = 4; return 0;
    case 0xcf: case 0xd3: h->fixed = 8; return 0;
    case 0xdc: h->kind = 2; h->len_bytes = 2; return 0;
    case 0xdd: h->kind = 2; h->len_bytes = 4; return 0;
    case 0xde: h->kind = 3; h->len_bytes = 2; return 0;
    case 0xdf: h->kind = 3; h->len_bytes = 4; return 0;
    case 0xc1: return pw_fail(err, PW_E_MALFORMED, "", "msgpack byte 0xc1 is never used");
    default: /* 0xc7-0xc9, 0xd4-0xd8 */
      return pw_fail(err, PW_E_MALFORMED, "", "msgpack ext types are not part of the protocol");
  }
}

int pw_scan_msgpack(const uint8_t *p, size_t n, pw_error *err) {
  if (n > PW_MAX_MESSAGE_BYTES)
    return pw_fail(err, PW_E_TOO_LARGE, "", "message is %zu bytes, the limit is %u", n,
                   PW_MAX_MESSAGE_BYTES);
  uint64_t left[PW_MAX_DEPTH + 1]; /* objects still to read at each open level */
  int top = 0;
  left[0] = 1;
  size_t pos = 0, elements = 0;
  while (top >= 0) {
    if (left[top] == 0) { top--; continue; }
    left[top]--;
    if (pos >= n) return pw_fail(err, PW_E_TRUNCATED, "", "message ends at byte %zu inside a value", pos);
    if (++elements > PW_MAX_ELEMENTS)
      return pw_fail(err, PW_E_TOO_LARGE, "", "more than %d values in one message", PW_MAX_ELEMENTS);
    header h;
    if (classify(p[pos++], &h, err)) return -1;
    size_t need = h.len_bytes + (h.fixed > 0 ? (size_t)h.fixed : 0);
    if (need > n - pos) return pw_fail(err, PW_E_TRUNCATED, "", "message ends at byte %zu inside a header", n);
    uint64_t len = h.len_bytes ? read_be(p + pos, h.len_bytes) : h.inline_len;
    pos += need;
    if (h.kind == 1) {
      if (len > n - pos)
        return pw_fail(err, PW_E_TRUNCATED, "", "a string of %llu bytes declared with %zu left",
                       (unsigned long long)len, n - pos);
      pos += len;
    } else if (h.kind >= 2) {
      if (top + 1 > PW_MAX_DEPTH)
        return pw_fail(err, PW_E_TOO_DEEP, "", "nesting deeper than %d", PW_MAX_DEPTH);
      uint64_t items = h.kind == 3 ? 2 * len : len;
      /* every item takes at least one byte, so a count above the bytes left is a lie */
      if (items > n - pos)
        return pw_fail(err, PW_E_TRUNCATED, "", "%llu values declared with %zu bytes left",
                       (unsigned long long)items, n - pos);
      left[++top] = items;
    }
  }
  if (pos != n) return pw_fail(err, PW_E_MALFORMED, "", "%zu trailing bytes after the message", n - pos);
  return 0;
}

int pw_unpack_msgpack(const void *buf, size_t len, msgpack_unpacked *out, pw_error *err) {
  if (pw_scan_msgpack(buf, len, err)) return -1;
  size_t off = 0;
  msgpack_unpack_return rc = msgpack_unpack_next(out, buf, len, &off);
  if (rc == MSGPACK_UNPACK_NOMEM_ERROR) return pw_fail(err, PW_E_NO_MEMORY, "", "out of memory");
  if (rc != MSGPACK_UNPACK_SUCCESS)
    return pw_fail(err, PW_E_MALFORMED, "", "msgpack-c rejected the message (%d)", (int)rc);
  if (out->data.type != MSGPACK_OBJECT_MAP)
    return pw_fail(err, PW_E_INVALID_TYPE, "", "a message must be a map");
  return 0;
}

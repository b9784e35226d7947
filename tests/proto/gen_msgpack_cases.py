# Writes msgpack_cases.inc: malformed msgpack inputs for test_proto_reject.c, built with a
# tiny packer so that the exact bytes are visible here. Run: python3 gen_msgpack_cases.py
import struct
class Raw(bytes): pass
def p(o):
    if isinstance(o, Raw): return bytes(o)
    if o is None: return b'\xc0'
    if o is True: return b'\xc3'
    if o is False: return b'\xc2'
    if isinstance(o, int):
        if 0 <= o < 128: return bytes([o])
        if 0 <= o < 2**64: return b'\xcf' + struct.pack('>Q', o)
        return b'\xd3' + struct.pack('>q', o)
    if isinstance(o, float): return b'\xcb' + struct.pack('>d', o)
    if isinstance(o, (bytes, bytearray)) and not isinstance(o, str):
        return b'\xc6' + struct.pack('>I', len(o)) + bytes(o)
    if isinstance(o, str): o = o.encode('utf-8', 'surrogatepass')
    raise TypeError
def s(b):  # str with raw bytes
    if isinstance(b, str): b = b.encode()
    return Raw((bytes([0xa0 + len(b)]) if len(b) < 32 else b'\xdb' + struct.pack('>I', len(b))) + b)
def m(pairs):
    out = bytes([0x80 + len(pairs)]) if len(pairs) < 16 else b'\xde' + struct.pack('>H', len(pairs))
    for k, v in pairs:
        out += p(s(k) if isinstance(k, str) else k) + p(s(v) if isinstance(v, str) else v)
    return Raw(out)
def arr(items):
    out = bytes([0x90 + len(items)]) if len(items) < 16 else b'\xdd' + struct.pack('>I', len(items))
    return Raw(out + b''.join(p(s(i) if isinstance(i, str) else i) for i in items))
base = [("id", "a"), ("prompt", "x")]
deep = s("z")
for _ in range(17): deep = m([("x", deep)])
deeparr = Raw(b'\x91' * 20 + b'\xc0')
cases = [
 ("empty", b"", "truncated", ""),
 ("deep maps", p(deep), "too_deep", ""),
 ("deep arrays", p(m(base + [("x", deeparr)])), "too_deep", ""),
 ("huge array", b'\xdd\xff\xff\xff\xff', "truncated", ""),
 ("huge str", b'\x81\xdb\xff\xff\xff\xff' + b'ab', "truncated", ""),
 ("huge map", b'\xdf\xff\xff\xff\xff\xc0', "truncated", ""),
 ("cut header", b'\x81\xda\x00', "truncated", ""),
 ("0xc1", b'\x81\xc1\xc0', "malformed", ""),
 ("ext", p(m(base + [("x", Raw(b'\xd4\x01\x00'))])), "malformed", ""),
 ("trailing", p(m(base)) + b'\xc0', "malformed", ""),
 ("top array", p(arr(["a"])), "invalid_type", ""),
 ("top int", b'\x05', "invalid_type", ""),
 ("bad utf8 prompt", p(m([("id", "a"), ("prompt", s(b'\xff'))])), "invalid_utf8", "prompt"),
 ("overlong utf8", p(m([("id", "a"), ("prompt", s(b'\xc0\x80'))])), "invalid_utf8", "prompt"),
 ("surrogate", p(m(base + [("negative_prompt", s(b'\xed\xa0\x80'))])), "invalid_utf8", "negative_prompt"),
 ("cut utf8", p(m([("id", "a"), ("prompt", s(b'ab\xe2\x82'))])), "invalid_utf8", "prompt"),
 ("nul prompt", p(m([("id", "a"), ("prompt", s(b'a\x00b'))])), "invalid_value", "prompt"),
 ("bin prompt", p(m([("id", "a"), ("prompt", b'abc')])), "invalid_type", "prompt"),
 ("u64 steps", p(m(base + [("steps", 2**64 - 1)])), "out_of_range", "steps"),
 ("nan t_start", p(m(base + [("t_start", float('nan'))])), "out_of_range", "t_start"),
 ("str image data", p(m([("id", "a"), ("kind", "img2img"), ("prompt", "x"), ("image", m([("data", "iVBORw0KGgo=")]))])), "invalid_type", "image.data"),
 ("int key", p(m(base + [(Raw(b'\x01'), 2)])), "invalid_type", ""),
 ("dup key", p(m([("id", "a"), ("prompt", "x"), ("id", "b")])), "duplicate_key", "id"),
 ("many values", p(m(base + [("x", arr([None] * 5000))])), "too_large", ""),
 ("unknown bad utf8", p(m(base + [("x", s(b'\xfe'))])), "invalid_utf8", "x"),
 ("unknown u64", p(m(base + [("x", 2**63)])), "out_of_range", "x"),
 ("float32 steps", p(m(base + [("steps", Raw(b'\xca\x41\x40\x00\x00'))])), "invalid_type", "steps"),
 ("nested int key", p(m(base + [("prior", m([(Raw(b'\x01'), 1)]))])), "invalid_type", "prior"),
 ("empty image", p(m([("id", "a"), ("kind", "variation"), ("image", m([("data", b'')]))])), "invalid_value", "image.data"),
]
def cstr(b):
    return '"' + ''.join('\\x%02x' % c for c in b) + '"'
with open(__import__('os').path.join(__import__('os').path.dirname(__file__), 'msgpack_cases.inc'), 'w') as f:
    f.write('/* Malformed msgpack inputs: {name, bytes, length, code, field}. Written by\n * gen_msgpack_cases.py (a tiny packer); kept as bytes so that the test needs no encoder. */\n')
    for name, b, code, field in cases:
        if code is None: continue
        f.write('{"%s", %s, %d, "%s", "%s"},\n' % (name, cstr(b) if b else '""', len(b), code, field))
print(len([c for c in cases if c[2]]))

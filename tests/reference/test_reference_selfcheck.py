#!/usr/bin/python3
"""Self-check of the Python reference (gguf_reader.py, ref_model.py, ref_forward.py).

  /usr/bin/python3 tests/reference/test_reference_selfcheck.py [-v]

1. golden: stories260K.gguf greedy-from-BOS ids (exact) and the logits summary at
   positions 0..2 for [1, 403, 407] (|diff| <= 1e-4); the GGUF v1 copy of the same
   weights reads identically.  Needs the fixtures dir ($KVSTASH_FIXTURES, else
   ../shared/models beside the repo root); skipped with a reason when absent.
2. dequantization of hand-built blocks of every supported type: literal byte
   patterns with hand-computed values, and whole blocks packed element by element
   from known scales/quants.
3. GGUF round trip through a minimal writer: all metadata types, nested arrays,
   custom alignment, v2 and v3.
4. synthetic models: llama (Q/K permuted the way llama.cpp's converter does,
   interleaved RoPE) / qwen2 (QKV bias, tied embeddings, partial rotary) / qwen3
   (q/k norm, key_length != n_embd/n_head) against a naive per-token HF-style
   implementation in this file (rotate_half RoPE); KV-cache vs full recompute;
   rope_freqs vs linear scaling; quantized weights vs their F32 twin; the CLI.
Prints `N passed, N failed[, N skipped]`; exit status 1 on any failure.
"""

import json
import math
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy  # noqa: F401
except ImportError:
    sys.stderr.write("%s: numpy is not available for %s; run it with /usr/bin/python3\n"
                     % (os.path.basename(__file__), sys.executable))
    sys.exit(1)
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gguf_reader as gr  # noqa: E402
from ref_model import Model  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VERBOSE = "-v" in sys.argv

_passed = 0
_failed = 0
_skipped = 0


def check(name, ok, detail=""):
    global _passed, _failed
    if ok:
        _passed += 1
        if VERBOSE:
            print("PASS %s %s" % (name, detail))
    else:
        _failed += 1
        print("FAIL %s %s" % (name, detail))
    return ok


def skip(name, reason):
    global _skipped
    _skipped += 1
    print("SKIP %s: %s" % (name, reason))


def fixtures_dir():
    env = os.environ.get("KVSTASH_FIXTURES")
    if env:
        return env
    return os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "models"))


# ============================================================================
# minimal GGUF writer (test-only)
# ============================================================================

def _w_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_FMT = {gr.T_UINT8: "<B", gr.T_INT8: "<b", gr.T_UINT16: "<H", gr.T_INT16: "<h",
        gr.T_UINT32: "<I", gr.T_INT32: "<i", gr.T_FLOAT32: "<f", gr.T_BOOL: "<?",
        gr.T_UINT64: "<Q", gr.T_INT64: "<q", gr.T_FLOAT64: "<d"}


def _w_val(vtype, val):
    if vtype == gr.T_STRING:
        return _w_str(val)
    if vtype == gr.T_ARRAY:
        etype, items = val
        out = struct.pack("<IQ", etype, len(items))
        for it in items:
            out += _w_val(etype, it)
        return out
    return struct.pack(_FMT[vtype], val)


def write_gguf(path, kvs, tensors, alignment=None, version=3):
    """kvs: [(key, vtype, value)] (array value = (elem_type, [items]));
    tensors: [(name, ggml_type, dims (GGUF order), raw bytes)]."""
    align = alignment or 32
    kvs = list(kvs)
    if alignment is not None:
        kvs.append(("general.alignment", gr.T_UINT32, alignment))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
    for k, t, v in kvs:
        out += _w_str(k) + struct.pack("<I", t) + _w_val(t, v)
    offs, off = [], 0
    for name, tt, dims, raw in tensors:
        offs.append(off)
        off = (off + len(raw) + align - 1) // align * align
    for (name, tt, dims, raw), o in zip(tensors, offs):
        out += _w_str(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", tt, o)
    out += b"\0" * ((-len(out)) % align)
    data_start = len(out)
    for (name, tt, dims, raw), o in zip(tensors, offs):
        out += b"\0" * (data_start + o - len(out))
        out += raw
    with open(path, "wb") as f:
        f.write(out)
    return data_start


def f32_tensor(name, arr):
    """numpy (rows, cols) or (n,) -> tensor tuple with GGUF dims reversed."""
    arr = np.asarray(arr, dtype=np.float32)
    return (name, gr.GGML_F32, list(reversed(arr.shape)), arr.astype("<f4").tobytes())


# ============================================================================
# scalar block packers (from the ggml block layouts), used to build test data
# ============================================================================

def h16(x):
    return np.array([x], dtype="<f2").tobytes()


def h16v(x):
    return float(np.float16(x))


def pack_q4_0(d, q):
    qs = bytes((q[j] & 15) | ((q[j + 16] & 15) << 4) for j in range(16))
    return h16(d) + qs, [(q[j] - 8) * h16v(d) for j in range(32)]


def pack_q4_1(d, m, q):
    qs = bytes((q[j] & 15) | ((q[j + 16] & 15) << 4) for j in range(16))
    return h16(d) + h16(m) + qs, [q[j] * h16v(d) + h16v(m) for j in range(32)]


def _q5_bits(q):
    qh = 0
    for j in range(32):
        qh |= ((q[j] >> 4) & 1) << j
    qs = bytes((q[j] & 15) | ((q[j + 16] & 15) << 4) for j in range(16))
    return struct.pack("<I", qh), qs


def pack_q5_0(d, q):
    qh, qs = _q5_bits(q)
    return h16(d) + qh + qs, [(q[j] - 16) * h16v(d) for j in range(32)]


def pack_q5_1(d, m, q):
    qh, qs = _q5_bits(q)
    return h16(d) + h16(m) + qh + qs, [q[j] * h16v(d) + h16v(m) for j in range(32)]


def pack_q8_0(d, q):
    return h16(d) + struct.pack("<32b", *q), [q[j] * h16v(d) for j in range(32)]


def _pack_k_scales(sc, m):
    s = [0] * 12
    for j in range(4):
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
        s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6)
        s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4)
    return bytes(s)


def pack_q4_k(d, dmin, sc, m, q):
    qs = bytearray(128)
    for c in range(4):
        for l in range(32):
            qs[32 * c + l] = (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)
    dd, dm = h16v(d), h16v(dmin)
    exp = [dd * sc[e // 32] * q[e] - dm * m[e // 32] for e in range(256)]
    return h16(d) + h16(dmin) + _pack_k_scales(sc, m) + bytes(qs), exp


def pack_q5_k(d, dmin, sc, m, q):
    qs = bytearray(128)
    qh = bytearray(32)
    for c in range(4):
        for l in range(32):
            qs[32 * c + l] = (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)
    for e in range(256):
        qh[e % 32] |= ((q[e] >> 4) & 1) << (e // 32)
    dd, dm = h16v(d), h16v(dmin)
    exp = [dd * sc[e // 32] * q[e] - dm * m[e // 32] for e in range(256)]
    return h16(d) + h16(dmin) + _pack_k_scales(sc, m) + bytes(qh) + bytes(qs), exp


def pack_q6_k(d, scales, q):
    """q: 256 values in 0..63 (stored value; the element is q-32)."""
    ql = bytearray(128)
    qh = bytearray(64)
    for n in range(2):
        b = 128 * n
        for l in range(32):
            ql[64 * n + l] = (q[b + l] & 15) | ((q[b + l + 64] & 15) << 4)
            ql[64 * n + l + 32] = (q[b + l + 32] & 15) | ((q[b + l + 96] & 15) << 4)
            qh[32 * n + l] = ((q[b + l] >> 4) | ((q[b + l + 32] >> 4) << 2)
                              | ((q[b + l + 64] >> 4) << 4) | ((q[b + l + 96] >> 4) << 6))
    dd = h16v(d)
    exp = [dd * scales[e // 16] * (q[e] - 32) for e in range(256)]
    return bytes(ql) + bytes(qh) + struct.pack("<16b", *scales) + h16(d), exp


def deq(tname, raw):
    return gr.dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), tname)


def same(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(a == b))


# ============================================================================
# 1. golden model
# ============================================================================

def parse_golden(path):
    ids, rows = None, {}
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("ids:"):
            ids = [int(t) for t in line[4:].split()]
        elif line.startswith("pos "):
            head, rest = line.split(":", 1)
            p = int(head.split()[1])
            seg = rest.split("|")
            top_ids = json.loads(seg[0].split("ids", 1)[1].split("values")[0].strip())
            top_vals = [float(x) for x in json.loads(
                seg[0].split("values", 1)[1].strip().replace("'", '"'))]
            tail = seg[1].split()
            s = float(tail[0].split("=")[1])
            l2 = float(tail[1].split("=")[1])
            first = [float(x) for x in json.loads(
                seg[1].split("=", 3)[3].strip().replace("'", '"'))]
            rows[p] = dict(top_ids=top_ids, top_vals=top_vals, sum=s, l2=l2, first=first)
    return ids, rows


def part_golden():
    fx = fixtures_dir()
    model_path = os.path.join(fx, "stories260K.gguf")
    gold_path = os.path.join(fx, "stories260K.greedy-from-BOS.txt")
    if not (os.path.exists(model_path) and os.path.exists(gold_path)):
        skip("golden stories260K", "fixtures not found in %s (set KVSTASH_FIXTURES or put "
             "shared/models beside the repo)" % fx)
        return
    gold_ids, gold_rows = parse_golden(gold_path)
    check("golden file parsed", gold_ids is not None and len(gold_ids) == 256
          and sorted(gold_rows) == [0, 1, 2], "ids=%s rows=%s" % (
              None if gold_ids is None else len(gold_ids), sorted(gold_rows)))
    m = Model(model_path)
    check("stories260K metadata", m.arch == "llama" and m.n_embd == 64 and m.n_layer == 5
          and m.n_head[0] == 8 and m.n_head_kv[0] == 4 and m.head_dim_k == 8
          and m.n_vocab == 512 and m.gguf.alignment == 32 and m.gguf.version == 3)
    got = m.greedy([1], 256)
    n_same = 0
    for a, b in zip(got, gold_ids):
        if a != b:
            break
        n_same += 1
    check("golden greedy 256 ids from BOS", got == gold_ids,
          "first mismatch at %d" % n_same if got != gold_ids else "")

    logits = m.forward([1, 403, 407])
    maxdiff = 0.0
    ok = True
    for p in range(3):
        g, lg = gold_rows[p], logits[p]
        top = [int(i) for i in np.argsort(-lg, kind="stable")[:5]]
        ok &= check("golden pos %d top5 ids" % p, top == g["top_ids"], "%s vs %s" % (top, g["top_ids"]))
        diffs = [abs(lg[i] - v) for i, v in zip(g["top_ids"], g["top_vals"])]
        diffs += [abs(lg[i] - v) for i, v in enumerate(g["first"])]
        diffs += [abs(lg.sum() - g["sum"]) / max(1.0, abs(g["sum"])),
                  abs(np.linalg.norm(lg) - g["l2"]) / max(1.0, g["l2"])]
        md = max(diffs)
        maxdiff = max(maxdiff, md)
        ok &= check("golden pos %d top5 values/sum/l2/logit[0..4] within 1e-4" % p, md <= 1e-4,
                    "max diff %.3g" % md)
    print("golden: greedy %d/256 ids match; max |logit diff| vs golden (5-decimal values) = %.3g"
          % (n_same, maxdiff))

    legacy = os.path.join(fx, "legacy", "tinyllamas-stories-260k-f32.gguf")
    if not os.path.exists(legacy):
        skip("legacy v1 file", "%s not found" % legacy)
        return
    g1 = gr.GGUFFile(legacy)
    g3 = m.gguf
    check("GGUF v1 reads", g1.version == 1 and set(g1.tensors) == set(g3.tensors))
    check("GGUF v1 tensors identical to v3 file",
          all(same(g1.tensor(n), g3.tensor(n)) for n in g3.tensors))


# ============================================================================
# 2. dequantization of hand-built blocks
# ============================================================================

def part_dequant_literals():
    # F32 / F16 / BF16 / F64
    check("F32", same(deq(gr.GGML_F32, struct.pack("<3f", 1.5, -2.25, 0.0)), [1.5, -2.25, 0.0]))
    check("F16 literals", same(deq(gr.GGML_F16, bytes.fromhex("003c00c0553501 00ff7b".replace(" ", ""))),
                                [1.0, -2.0, 0.333251953125, 2.0 ** -24, 65504.0]))
    check("BF16 literals", same(deq(gr.GGML_BF16, bytes.fromhex("803f40c0ab3e0000")),
                                 [1.0, -3.0, 0.333984375, 0.0]))
    check("F64", same(deq(gr.GGML_F64, struct.pack("<2d", 0.1, -7.0)), [0.1, -7.0]))

    # Q4_0: d=0.5; qs[0]=0x9F -> e0=(15-8)*.5=3.5, e16=(9-8)*.5=.5; qs[j]=0x88 -> 0
    raw = bytes.fromhex("0038") + bytes([0x9F]) + bytes([0x88]) * 14 + bytes([0x3C])
    exp = [0.0] * 32
    exp[0], exp[16], exp[15], exp[31] = 3.5, 0.5, (12 - 8) * 0.5, (3 - 8) * 0.5
    check("Q4_0 literal block", same(deq(gr.GGML_Q4_0, raw), exp))

    # Q4_1: d=2, m=-1; qs[1]=0x5A -> e1=10*2-1=19, e17=5*2-1=9; others 0 -> -1
    raw = h16(2.0) + h16(-1.0) + bytes([0x00, 0x5A]) + bytes(14)
    exp = [-1.0] * 32
    exp[1], exp[17] = 19.0, 9.0
    check("Q4_1 literal block", same(deq(gr.GGML_Q4_1, raw), exp))

    # Q5_0: d=1; qh = 0x00010001 (bits 0 and 16); qs[0]=0x21 -> e0=(1|16)-16=1, e16=(2|16)-16=2,
    # every other element has q=0 -> -16
    raw = bytes.fromhex("003c") + bytes([1, 0, 1, 0]) + bytes([0x21]) + bytes(15)
    exp = [-16.0] * 32
    exp[0], exp[16] = 1.0, 2.0
    check("Q5_0 literal block", same(deq(gr.GGML_Q5_0, raw), exp))

    # Q5_1: d=0.5, m=-1; qh bit 31 (byte 3 = 0x80); qs[15]=0xF0 -> e15=0*.5-1=-1, e31=31*.5-1=14.5;
    # qh bit 3 (byte 0 = 0x08) with qs[3]=0x01 -> e3=(1|16)*.5-1=7.5
    raw = bytes.fromhex("0038" "00bc") + bytes([0x08, 0, 0, 0x80]) + bytes([0, 0, 0, 0x01]) \
        + bytes(11) + bytes([0xF0])
    exp = [-1.0] * 32
    exp[3], exp[31] = 7.5, 14.5
    check("Q5_1 literal block", same(deq(gr.GGML_Q5_1, raw), exp))

    # Q8_0: d=0.25; q = -128, 127, -1, 0...
    raw = bytes.fromhex("0034") + bytes([0x80, 0x7F, 0xFF]) + bytes(29)
    exp = [0.0] * 32
    exp[0], exp[1], exp[2] = -32.0, 31.75, -0.25
    check("Q8_0 literal block", same(deq(gr.GGML_Q8_0, raw), exp))

    # Q4_K: d=1, dmin=0.5.  scales bytes:
    #   s[0]=0x41 -> sc0=1, and bit6 -> high bits of sc4 (=1<<4)
    #   s[1..3]=2,3,4 -> sc1..3;  s[4..7]=5,6,7,8 -> m0..3
    #   s[8]=0x21 -> sc4 = 1|16 = 17, m4 = 2;  s[9]=0x43 -> sc5=3, m5=4
    #   s[10]=0x65 -> sc6=5, m6=6;  s[11]=0x87 -> sc7=7, m7=8
    # qs[0]=0x3A: e0 (sub 0, low) = 1*1*10-.5*5 = 7.5; e32 (sub 1, high) = 2*3-.5*6 = 3
    # qs[64]=0x07: e128 (sub 4) = 17*7-.5*2 = 118; e160 (sub 5, high nibble 0) = -.5*4 = -2
    # qs[127]=0xF0: e255 (sub 7, high) = 7*15 - .5*8 = 101; e223 (sub 6, low 0) = -3
    scales = bytes([0x41, 2, 3, 4, 5, 6, 7, 8, 0x21, 0x43, 0x65, 0x87])
    qs = bytearray(128)
    qs[0], qs[64], qs[127] = 0x3A, 0x07, 0xF0
    raw = h16(1.0) + h16(0.5) + scales + bytes(qs)
    y = deq(gr.GGML_Q4_K, raw)
    mins = [5, 6, 7, 8, 2, 4, 6, 8]
    exp = np.array([-0.5 * mins[e // 32] for e in range(256)])
    exp[0], exp[32], exp[128], exp[255] = 7.5, 3.0, 118.0, 101.0
    check("Q4_K literal block", same(y, exp), "" if same(y, exp) else str(np.nonzero(y != exp)))

    # Q5_K: same scales; qh[0]=0x03 -> e0 and e32 get +16; qh[31]=0x80 -> e255 gets +16
    qh = bytearray(32)
    qh[0], qh[31] = 0x03, 0x80
    raw = h16(1.0) + h16(0.5) + scales + bytes(qh) + bytes(qs)
    exp5 = exp.copy()
    exp5[0], exp5[32], exp5[255] = 1 * 26 - 2.5, 2 * 19 - 3.0, 7 * 31 - 4.0
    check("Q5_K literal block", same(deq(gr.GGML_Q5_K, raw), exp5))

    # Q6_K: d=0.5; scales[2]=4, [4]=1, [6]=1, [15]=2, [0]=-3, others 0
    #   ql[0]=0xF1, qh[0]=0xE4 (bits: 00, 01, 10, 11)
    #   e0  = (1 | 0<<4)-32 = -31 -> .5*-3*-31 = 46.5
    #   e32 = (ql[32]&15=0 | 1<<4)-32 = -16 -> .5*4*-16 = -32
    #   e64 = (15 | 2<<4)-32 = 15 -> .5*1*15 = 7.5
    #   e96 = (0 | 3<<4)-32 = 16 -> .5*1*16 = 8
    #   e255: half 1, l=31, group 3: ql[64+32+31]>>4 = 5, qh[32+31] bits 6-7 = 1 -> (5|16)-32=-11 -> .5*2*-11=-11
    ql = bytearray(128)
    qh = bytearray(64)
    ql[0], qh[0], ql[127], qh[63] = 0xF1, 0xE4, 0x50, 0x40
    sc = [0] * 16
    sc[0], sc[2], sc[4], sc[6], sc[15] = -3, 4, 1, 1, 2
    raw = bytes(ql) + bytes(qh) + struct.pack("<16b", *sc) + h16(0.5)
    y = deq(gr.GGML_Q6_K, raw)
    exp = np.array([0.5 * sc[e // 16] * -32 for e in range(256)])
    exp[0], exp[32], exp[64], exp[96], exp[255] = 46.5, -32.0, 7.5, 8.0, -11.0
    check("Q6_K literal block", same(y, exp), "" if same(y, exp) else str(np.nonzero(y != exp)))


def part_dequant_packed_blocks():
    rng = np.random.RandomState(1234)

    def ri(lo, hi, n):
        return [int(x) for x in rng.randint(lo, hi + 1, size=n)]

    cases = []
    for blk in range(3):
        d = [0.5, -0.0078125, 3.25][blk]
        m = [-1.0, 0.125, -7.5][blk]
        cases.append(("Q4_0", gr.GGML_Q4_0, pack_q4_0(d, ri(0, 15, 32))))
        cases.append(("Q4_1", gr.GGML_Q4_1, pack_q4_1(d, m, ri(0, 15, 32))))
        cases.append(("Q5_0", gr.GGML_Q5_0, pack_q5_0(d, ri(0, 31, 32))))
        cases.append(("Q5_1", gr.GGML_Q5_1, pack_q5_1(d, m, ri(0, 31, 32))))
        cases.append(("Q8_0", gr.GGML_Q8_0, pack_q8_0(d, ri(-128, 127, 32))))
        cases.append(("Q4_K", gr.GGML_Q4_K, pack_q4_k(d, abs(m), ri(0, 63, 8), ri(0, 63, 8), ri(0, 15, 256))))
        cases.append(("Q5_K", gr.GGML_Q5_K, pack_q5_k(d, abs(m), ri(0, 63, 8), ri(0, 63, 8), ri(0, 31, 256))))
        cases.append(("Q6_K", gr.GGML_Q6_K, pack_q6_k(d, ri(-128, 127, 16), ri(0, 63, 256))))
    # per type: each block alone, then all blocks of the type concatenated
    by_type = {}
    for name, t, (raw, exp) in cases:
        check("%s packed block" % name, same(deq(t, raw), exp))
        by_type.setdefault((name, t), []).append((raw, exp))
    for (name, t), blocks in by_type.items():
        raw = b"".join(b[0] for b in blocks)
        exp = sum((b[1] for b in blocks), [])
        check("%s 3 consecutive blocks" % name, same(deq(t, raw), exp))


# ============================================================================
# 3. GGUF container round trip
# ============================================================================

def part_gguf_roundtrip(tmp):
    rng = np.random.RandomState(7)
    kvs = [
        ("general.architecture", gr.T_STRING, "llama"),
        ("t.u8", gr.T_UINT8, 250), ("t.i8", gr.T_INT8, -5),
        ("t.u16", gr.T_UINT16, 65000), ("t.i16", gr.T_INT16, -32000),
        ("t.u32", gr.T_UINT32, 4000000000), ("t.i32", gr.T_INT32, -2000000000),
        ("t.f32", gr.T_FLOAT32, 0.5), ("t.bool", gr.T_BOOL, True),
        ("t.str", gr.T_STRING, "h\u00e9llo \u4e16\u754c"),
        ("t.u64", gr.T_UINT64, 2 ** 63 + 5), ("t.i64", gr.T_INT64, -(2 ** 40)),
        ("t.f64", gr.T_FLOAT64, 0.1),
        ("t.arr_i32", gr.T_ARRAY, (gr.T_INT32, [1, -2, 3])),
        ("t.arr_f32", gr.T_ARRAY, (gr.T_FLOAT32, [0.25, -1.5])),
        ("t.arr_str", gr.T_ARRAY, (gr.T_STRING, ["a", "", "<0x0A>", "\u2581the"])),
        ("t.arr_bool", gr.T_ARRAY, (gr.T_BOOL, [True, False])),
        ("t.arr_empty", gr.T_ARRAY, (gr.T_UINT8, [])),
        ("t.arr_nested", gr.T_ARRAY, (gr.T_ARRAY, [(gr.T_INT16, [1, 2]), (gr.T_STRING, ["x"])])),
    ]
    a = rng.randn(3, 5).astype(np.float32)
    b16 = rng.randn(7).astype(np.float16)
    q8raw, q8exp = pack_q8_0(0.5, [int(x) for x in rng.randint(-128, 128, 32)])
    q8raw2, q8exp2 = pack_q8_0(-2.0, [int(x) for x in rng.randint(-128, 128, 32)])
    c = rng.randn(2, 3, 4).astype(np.float32)
    tensors = [
        f32_tensor("a", a),
        ("b16", gr.GGML_F16, [7], b16.astype("<f2").tobytes()),
        ("q8", gr.GGML_Q8_0, [32, 2], q8raw + q8raw2),
        f32_tensor("c3d", c),
    ]
    for version in (2, 3):
        for align in (None, 64):
            path = os.path.join(tmp, "rt_v%d_%s.gguf" % (version, align))
            data_start = write_gguf(path, kvs, tensors, alignment=align, version=version)
            g = gr.GGUFFile(path)
            tag = "v%d align=%s" % (version, align)
            md = g.metadata
            ok = (g.version == version and g.alignment == (align or 32)
                  and g.data_offset == data_start and g.data_offset % (align or 32) == 0)
            check("roundtrip %s header/alignment" % tag, ok,
                  "data_offset %d vs %d" % (g.data_offset, data_start))
            scal = all(md[k] == v for k, t, v in kvs
                       if t not in (gr.T_ARRAY, gr.T_FLOAT32, gr.T_FLOAT64))
            scal &= md["t.f32"] == 0.5 and md["t.f64"] == 0.1 and md["t.bool"] is True
            check("roundtrip %s scalar metadata" % tag, scal)
            arrs = (list(md["t.arr_i32"]) == [1, -2, 3]
                    and list(md["t.arr_f32"]) == [0.25, -1.5]
                    and md["t.arr_str"] == ["a", "", "<0x0A>", "\u2581the"]
                    and list(md["t.arr_bool"]) == [True, False]
                    and len(md["t.arr_empty"]) == 0
                    and list(md["t.arr_nested"][0]) == [1, 2] and md["t.arr_nested"][1] == ["x"]
                    and g.metadata_types["t.arr_str"] == (gr.T_ARRAY, gr.T_STRING))
            check("roundtrip %s array metadata" % tag, arrs)
            check("roundtrip %s tensor infos" % tag,
                  list(g.tensors) == ["a", "b16", "q8", "c3d"]
                  and g.tensors["a"].dims == (5, 3) and g.tensors["a"].shape == (3, 5)
                  and g.tensors["c3d"].dims == (4, 3, 2)
                  and all(ti.abs_offset % (align or 32) == 0 for ti in g.tensors.values()))
            check("roundtrip %s tensor data" % tag,
                  same(g.tensor("a"), a) and same(g.tensor("b16"), b16)
                  and same(g.tensor("q8"), np.array([q8exp, q8exp2]))
                  and same(g.tensor("c3d"), c))

    # malformed / unsupported files are refused with an exception, not garbage
    bad = os.path.join(tmp, "bad_magic.gguf")
    with open(bad, "wb") as f:
        f.write(b"GGUX" + bytes(20))
    try:
        gr.GGUFFile(bad)
        check("bad magic refused", False)
    except gr.GGUFError:
        check("bad magic refused", True)
    trunc = os.path.join(tmp, "trunc.gguf")
    full = open(os.path.join(tmp, "rt_v3_None.gguf"), "rb").read()
    with open(trunc, "wb") as f:
        f.write(full[:len(full) - 8])
    try:
        gr.GGUFFile(trunc)
        check("truncated data refused", False)
    except gr.GGUFError:
        check("truncated data refused", True)


# ============================================================================
# 4. synthetic models vs a naive HF-style implementation
# ============================================================================

def hf_forward(cfg, W, ids):
    """Naive per-token float64 forward with Hugging Face conventions
    (q/k rows in HF order, rotate_half RoPE on the first n_rot dims)."""
    D, H, KV, hd = cfg["n_embd"], cfg["n_head"], cfg["n_kv"], cfg["head_dim"]
    n_rot, base = cfg["n_rot"], cfg["base"]
    eps = float(np.float32(cfg["eps"]))   # stored as a GGUF float32
    inv = np.array([1.0 / (base ** (2.0 * i / n_rot)) for i in range(n_rot // 2)])
    if cfg.get("freq_factors") is not None:
        inv = inv / np.asarray(cfg["freq_factors"])
    scale_pos = cfg.get("linear_factor", 1.0)

    def norm(x, w):
        return x / math.sqrt(float(np.dot(x, x)) / x.size + eps) * w

    def rope(v, p):
        out = v.copy()
        half = n_rot // 2
        for i in range(half):
            a = (p / scale_pos) * inv[i]
            c, s = math.cos(a), math.sin(a)
            x1, x2 = v[i], v[i + half]
            out[i] = x1 * c - x2 * s          # x*cos + rotate_half(x)*sin, rotate_half=(-x2, x1)
            out[i + half] = x2 * c + x1 * s
        return out

    T = len(ids)
    xs = [W["embed"][t].astype(np.float64).copy() for t in ids]
    for L in W["layers"]:
        qs, ks, vs = [], [], []
        for t in range(T):
            h = norm(xs[t], L["in_norm"])
            q = L["q"] @ h + (L["q_b"] if "q_b" in L else 0)
            k = L["k"] @ h + (L["k_b"] if "k_b" in L else 0)
            v = L["v"] @ h + (L["v_b"] if "v_b" in L else 0)
            q = q.reshape(H, hd)
            k = k.reshape(KV, hd)
            if "q_norm" in L:
                q = np.array([norm(q[j], L["q_norm"]) for j in range(H)])
                k = np.array([norm(k[j], L["k_norm"]) for j in range(KV)])
            qs.append(np.array([rope(q[j], t) for j in range(H)]))
            ks.append(np.array([rope(k[j], t) for j in range(KV)]))
            vs.append(v.reshape(KV, hd))
        new = []
        for t in range(T):
            o = np.zeros(H * hd)
            for j in range(H):
                kvh = j // (H // KV)
                sc = np.array([np.dot(qs[t][j], ks[s][kvh]) / math.sqrt(hd) for s in range(t + 1)])
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                o[j * hd:(j + 1) * hd] = sum(pr[s] * vs[s][kvh] for s in range(t + 1))
            x = xs[t] + L["o"] @ o
            h = norm(x, L["post_norm"])
            g = L["gate"] @ h
            with np.errstate(over="ignore"):
                act = g / (1 + np.exp(-g))
            x = x + L["down"] @ (act * (L["up"] @ h))
            new.append(x)
        xs = new
    lm = W.get("lm_head", W["embed"])
    return np.array([lm @ norm(x, W["norm"]) for x in xs])


def make_hf_weights(cfg, rng, bias=False, qk_norm=False, tied=False):
    D, H, KV, hd, F, V = (cfg["n_embd"], cfg["n_head"], cfg["n_kv"], cfg["head_dim"],
                          cfg["n_ff"], cfg["n_vocab"])

    def r(*shape, s=0.3):   # float32-representable values
        return (rng.randn(*shape) * s).astype(np.float32).astype(np.float64)

    def r1(*shape, s=0.1):  # 1 + noise, float32-representable (norm weights)
        return (1.0 + rng.randn(*shape) * s).astype(np.float32).astype(np.float64)

    W = {"embed": r(V, D, s=1.0), "norm": r1(D), "layers": []}
    if not tied:
        W["lm_head"] = r(V, D)
    for _ in range(cfg["n_layer"]):
        L = {"in_norm": r1(D), "q": r(H * hd, D), "k": r(KV * hd, D),
             "v": r(KV * hd, D), "o": r(D, H * hd), "post_norm": r1(D),
             "gate": r(F, D), "up": r(F, D), "down": r(D, F)}
        if bias:
            L["q_b"], L["k_b"], L["v_b"] = r(H * hd), r(KV * hd), r(KV * hd)
        if qk_norm:
            L["q_norm"], L["k_norm"] = r1(hd, s=0.2), r1(hd, s=0.2)
        W["layers"].append(L)
    return W


def converter_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf LlamaModel.permute: HF (rotate_half) row order ->
    GGUF interleaved-pair order, per head."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_model(path, arch, cfg, W, extra_kv=(), extra_tensors=(), quant=None):
    """quant: optional fn(name, arr2d) -> tensor tuple or None (None = F32)."""
    A = arch + "."
    kvs = [("general.architecture", gr.T_STRING, arch),
           (A + "embedding_length", gr.T_UINT32, cfg["n_embd"]),
           (A + "block_count", gr.T_UINT32, cfg["n_layer"]),
           (A + "feed_forward_length", gr.T_UINT32, cfg["n_ff"]),
           (A + "attention.head_count", gr.T_UINT32, cfg["n_head"]),
           (A + "attention.head_count_kv", gr.T_UINT32, cfg["n_kv"]),
           (A + "attention.layer_norm_rms_epsilon", gr.T_FLOAT32, cfg["eps"]),
           (A + "rope.freq_base", gr.T_FLOAT32, cfg["base"]),
           (A + "context_length", gr.T_UINT32, 256)]
    if cfg["head_dim"] != cfg["n_embd"] // cfg["n_head"]:
        kvs.append((A + "attention.key_length", gr.T_UINT32, cfg["head_dim"]))
        kvs.append((A + "attention.value_length", gr.T_UINT32, cfg["head_dim"]))
    if cfg["n_rot"] != cfg["head_dim"]:
        kvs.append((A + "rope.dimension_count", gr.T_UINT32, cfg["n_rot"]))
    kvs += list(extra_kv)

    def t2(name, arr):
        if quant is not None:
            tt = quant(name, arr)
            if tt is not None:
                return tt
        return f32_tensor(name, arr)

    ts = [t2("token_embd.weight", W["embed"]), f32_tensor("output_norm.weight", W["norm"])]
    if "lm_head" in W:
        ts.append(t2("output.weight", W["lm_head"]))
    for il, L in enumerate(W["layers"]):
        p = "blk.%d." % il
        q, k = L["q"], L["k"]
        if arch == "llama":
            q = converter_permute(q, cfg["n_head"])
            k = converter_permute(k, cfg["n_kv"])
        ts += [f32_tensor(p + "attn_norm.weight", L["in_norm"]), t2(p + "attn_q.weight", q),
               t2(p + "attn_k.weight", k), t2(p + "attn_v.weight", L["v"]),
               t2(p + "attn_output.weight", L["o"]), f32_tensor(p + "ffn_norm.weight", L["post_norm"]),
               t2(p + "ffn_gate.weight", L["gate"]), t2(p + "ffn_up.weight", L["up"]),
               t2(p + "ffn_down.weight", L["down"])]
        if "q_b" in L:
            ts += [f32_tensor(p + "attn_q.bias", L["q_b"]), f32_tensor(p + "attn_k.bias", L["k_b"]),
                   f32_tensor(p + "attn_v.bias", L["v_b"])]
        if "q_norm" in L:
            ts += [f32_tensor(p + "attn_q_norm.weight", L["q_norm"]),
                   f32_tensor(p + "attn_k_norm.weight", L["k_norm"])]
    ts += list(extra_tensors)
    write_gguf(path, kvs, ts)


def maxabs(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def part_synthetic_models(tmp):
    rng = np.random.RandomState(42)
    ids = [3, 17, 5, 60, 0, 22, 41, 9, 33]
    base_cfg = dict(n_embd=32, n_layer=2, n_head=4, n_kv=2, head_dim=8, n_rot=8, n_ff=48,
                    n_vocab=64, eps=1e-5, base=10000.0)
    variants = [
        ("llama", dict(), dict()),
        ("llama MHA", dict(n_kv=4, base=500000.0), dict()),
        ("qwen2 bias+tied+partial-rope", dict(n_rot=4, base=1000000.0, eps=1e-6),
         dict(bias=True, tied=True)),
        ("qwen3 qk-norm key_length=16", dict(head_dim=16, n_kv=1), dict(qk_norm=True)),
    ]
    for label, over, wopt in variants:
        arch = label.split()[0]
        cfg = dict(base_cfg, **over)
        W = make_hf_weights(cfg, rng, **wopt)
        path = os.path.join(tmp, "syn_%s.gguf" % label.split()[0] + str(len(label)))
        write_model(path, arch, cfg, W)
        m = Model(path)
        got = m.forward(ids)
        exp = hf_forward(cfg, W, ids)
        d = maxabs(got, exp)
        check("synthetic %s vs naive HF-style forward" % label, d < 1e-9, "max diff %.3g" % d)
        # KV cache: token-by-token and chunked equal the one-shot pass
        c = m.new_cache()
        step = np.array([m.forward([t], c)[0] for t in ids])
        c2 = m.new_cache()
        chunk = np.concatenate([m.forward(ids[:4], c2), m.forward(ids[4:], c2)])
        d2 = max(maxabs(step, got), maxabs(chunk, got))
        check("synthetic %s KV-cache consistency" % label, d2 < 1e-10, "max diff %.3g" % d2)
        # greedy with cache == argmax of full recomputation
        g = m.greedy(ids[:3], 6)
        seq, g2 = list(ids[:3]), []
        for _ in range(6):
            t = int(np.argmax(hf_forward(cfg, W, seq)[-1]))
            g2.append(t)
            seq.append(t)
        check("synthetic %s greedy (cached) == naive recompute" % label, g == g2, "%s vs %s" % (g, g2))

    # rope_freqs.weight divides the frequencies: all-2 factors == linear scaling factor 2,
    # and mixed factors match the naive implementation
    cfg = dict(base_cfg)
    W = make_hf_weights(cfg, rng)
    ff = np.array([1.0, 2.0, 4.0, 8.0])
    p1 = os.path.join(tmp, "rf_mixed.gguf")
    write_model(p1, "llama", cfg, W, extra_tensors=[f32_tensor("rope_freqs.weight", ff)])
    d = maxabs(Model(p1).forward(ids), hf_forward(dict(cfg, freq_factors=ff), W, ids))
    check("rope_freqs.weight factors vs naive", d < 1e-9, "max diff %.3g" % d)
    p2 = os.path.join(tmp, "rf_two.gguf")
    write_model(p2, "llama", cfg, W, extra_tensors=[f32_tensor("rope_freqs.weight", np.full(4, 2.0))])
    p3 = os.path.join(tmp, "lin_two.gguf")
    write_model(p3, "llama", cfg, W, extra_kv=[("llama.rope.scaling.type", gr.T_STRING, "linear"),
                                                ("llama.rope.scaling.factor", gr.T_FLOAT32, 2.0)])
    a2, a3 = Model(p2).forward(ids), Model(p3).forward(ids)
    a1 = Model(p1).forward(ids)
    check("rope_freqs all-2 == linear scaling x2", maxabs(a2, a3) < 1e-10 and maxabs(a1, a2) > 1e-3,
          "diff %.3g" % maxabs(a2, a3))

    # interleaved vs neox must differ (guards against the two styles collapsing)
    pq = os.path.join(tmp, "as_qwen2.gguf")
    write_model(pq, "qwen2", cfg, W)
    pl = os.path.join(tmp, "as_llama.gguf")
    write_model(pl, "llama", cfg, W)
    d_same = maxabs(Model(pq).forward(ids), Model(pl).forward(ids))
    check("llama(permuted Q/K, interleaved) == qwen2(unpermuted, neox)", d_same < 1e-10,
          "diff %.3g" % d_same)

    # quantized weights == their dequantized F32 twin (Q8_0, Q4_K, Q6_K, Q5_0 ...)
    qcfg = dict(base_cfg, n_embd=256, n_head=4, n_kv=2, head_dim=64, n_rot=64, n_ff=256,
                n_vocab=80, n_layer=1)
    Wq = make_hf_weights(qcfg, rng)
    kinds = [gr.GGML_Q4_K, gr.GGML_Q6_K, gr.GGML_Q8_0, gr.GGML_Q5_0, gr.GGML_Q4_0,
             gr.GGML_Q5_1, gr.GGML_Q5_K, gr.GGML_F16, gr.GGML_BF16]
    made = {}
    counter = [0]

    def rand_rows(t, rows, cols):
        out_raw, out_val = [], []
        for _ in range(rows):
            if t == gr.GGML_F16:
                v = (rng.randn(cols) * 0.2).astype(np.float16)
                out_raw.append(v.astype("<f2").tobytes())
                out_val.append(v.astype(np.float64))
                continue
            if t == gr.GGML_BF16:
                v = (rng.randn(cols) * 0.2).astype(np.float32)
                b = (v.view(np.uint32) >> 16).astype("<u2")
                out_raw.append(b.tobytes())
                out_val.append((b.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
                continue
            row_raw, row_val = b"", []
            for _ in range(cols // gr.BLOCK_INFO[t][0]):
                d = float(np.float16(rng.uniform(0.001, 0.02)))
                ri = lambda lo, hi, n: [int(x) for x in rng.randint(lo, hi + 1, n)]  # noqa: E731
                if t == gr.GGML_Q4_K:
                    raw, v = pack_q4_k(d, d / 2, ri(0, 63, 8), ri(0, 63, 8), ri(0, 15, 256))
                elif t == gr.GGML_Q5_K:
                    raw, v = pack_q5_k(d, d / 2, ri(0, 63, 8), ri(0, 63, 8), ri(0, 31, 256))
                elif t == gr.GGML_Q6_K:
                    raw, v = pack_q6_k(d / 8, ri(-128, 127, 16), ri(0, 63, 256))
                elif t == gr.GGML_Q8_0:
                    raw, v = pack_q8_0(d, ri(-128, 127, 32))
                elif t == gr.GGML_Q5_0:
                    raw, v = pack_q5_0(d * 4, ri(0, 31, 32))
                elif t == gr.GGML_Q5_1:
                    raw, v = pack_q5_1(d * 4, -0.1, ri(0, 31, 32))
                else:
                    raw, v = pack_q4_0(d * 8, ri(0, 15, 32))
                row_raw += raw
                row_val += v
            out_raw.append(row_raw)
            out_val.append(row_val)
        return b"".join(out_raw), np.array(out_val, dtype=np.float64)

    def quant(name, arr):
        if arr.ndim != 2:
            return None
        t = kinds[counter[0] % len(kinds)]
        counter[0] += 1
        raw, val = rand_rows(t, arr.shape[0], arr.shape[1])
        made[name] = val
        return (name, t, [arr.shape[1], arr.shape[0]], raw)

    pq = os.path.join(tmp, "quant.gguf")
    write_model(pq, "qwen2", qcfg, Wq, quant=quant)
    gq = gr.GGUFFile(pq)
    used = sorted(set(gr.type_name(ti.type) for ti in gq.tensors.values()))
    ok_vals = all(same(gq.tensor(n), v) for n, v in made.items())
    check("quantized model tensors decode to the packed values (%s)" % ",".join(used), ok_vals)
    # the F32 twin: same values written as F32 (all are float32-exact)
    Wt = {"embed": made["token_embd.weight"], "norm": Wq["norm"], "lm_head": made["output.weight"],
          "layers": []}
    for il, L in enumerate(Wq["layers"]):
        p = "blk.%d." % il
        Wt["layers"].append(dict(L, q=made[p + "attn_q.weight"], k=made[p + "attn_k.weight"],
                                 v=made[p + "attn_v.weight"], o=made[p + "attn_output.weight"],
                                 gate=made[p + "ffn_gate.weight"], up=made[p + "ffn_up.weight"],
                                 down=made[p + "ffn_down.weight"]))
    pt = os.path.join(tmp, "quant_twin.gguf")
    write_model(pt, "qwen2", qcfg, Wt)
    lq, lt = Model(pq).forward(ids), Model(pt).forward(ids)
    check("quantized model == F32 twin", maxabs(lq, lt) < 1e-10, "diff %.3g" % maxabs(lq, lt))
    lh = hf_forward(qcfg, Wt, ids[:4])
    check("quantized model vs naive HF-style forward", maxabs(lq[:4], lh) < 1e-9,
          "diff %.3g" % maxabs(lq[:4], lh))
    return pl, cfg, W, ids


def part_cli(tmp, model_path, cfg, W, ids):
    cli = os.path.join(HERE, "ref_forward.py")
    out = os.path.join(tmp, "out.json")

    def run(*args):
        return subprocess.run([sys.executable, cli] + list(args), capture_output=True, text=True)

    r = run(model_path, "--ids", " ".join(map(str, ids)), "--positions", "0,2,-1",
            "--greedy", "5", "--out", out)
    ok = r.returncode == 0
    check("CLI runs", ok, r.stderr.strip())
    if ok:
        j = json.load(open(out))
        exp = hf_forward(cfg, W, ids)
        m = Model(model_path)
        check("CLI JSON keys/positions", j["positions"] == [0, 2, len(ids) - 1]
              and len(j["logits"]) == 3 and all(len(r_) == cfg["n_vocab"] for r_ in j["logits"])
              and j["n_vocab"] == cfg["n_vocab"] and j["arch"] == "llama")
        d = maxabs(np.array(j["logits"]), exp[[0, 2, len(ids) - 1]])
        check("CLI logits == naive", d < 1e-9, "diff %.3g" % d)
        check("CLI greedy", j["greedy"] == m.greedy(ids, 5), str(j["greedy"]))
    r = run(model_path, "--ids", "1 2", "--positions", "all", "--out", out)
    j = json.load(open(out)) if r.returncode == 0 else {}
    check("CLI --positions all, no greedy", r.returncode == 0 and j["positions"] == [0, 1]
          and j["greedy"] == [])
    r = run(model_path, "--ids", "1 2", "--out", out)
    j = json.load(open(out)) if r.returncode == 0 else {}
    check("CLI default positions = last", r.returncode == 0 and j["positions"] == [1])

    # unsupported architecture / tensor type -> exit 2 with a message
    p = os.path.join(tmp, "gpt2.gguf")
    write_gguf(p, [("general.architecture", gr.T_STRING, "gpt2")], [f32_tensor("x", np.ones(4))])
    r = run(p, "--ids", "1", "--out", out)
    check("CLI unsupported arch -> exit 2", r.returncode == 2 and "architecture" in r.stderr,
          "rc=%d %s" % (r.returncode, r.stderr.strip()))
    p = os.path.join(tmp, "q2k.gguf")
    write_gguf(p, [("general.architecture", gr.T_STRING, "llama")],
               [("blk.0.attn_q.weight", gr.GGML_Q2_K, [256, 1], bytes(84))])
    r = run(p, "--ids", "1", "--out", out)
    check("CLI unsupported tensor type -> exit 2", r.returncode == 2 and "Q2_K" in r.stderr,
          "rc=%d %s" % (r.returncode, r.stderr.strip()))
    r = run(model_path, "--ids", "1 999", "--out", out)
    check("CLI out-of-range id -> exit 2", r.returncode == 2, "rc=%d" % r.returncode)


def main():
    tests = [("golden", part_golden), ("dequant literals", part_dequant_literals),
             ("dequant packed", part_dequant_packed_blocks)]
    for name, fn in tests:
        try:
            fn()
        except Exception as e:  # report and continue
            import traceback
            traceback.print_exc()
            check("%s raised" % name, False, repr(e))
    with tempfile.TemporaryDirectory(prefix="kvstash_ref_") as tmp:
        try:
            part_gguf_roundtrip(tmp)
        except Exception as e:
            import traceback
            traceback.print_exc()
            check("roundtrip raised", False, repr(e))
        try:
            args = part_synthetic_models(tmp)
            part_cli(tmp, *args)
        except Exception as e:
            import traceback
            traceback.print_exc()
            check("synthetic/CLI raised", False, repr(e))
    line = "%d passed, %d failed" % (_passed, _failed)
    if _skipped:
        line += ", %d skipped" % _skipped
    print(line)
    return 1 if _failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Minimal, independent GGUF reader + ggml dequantization in numpy.

Written from the GGUF specification (ggml docs/gguf.md) and the ggml block
definitions; it is a test oracle for kvstash and deliberately shares no code
with the C++ engine.

Only the Python 3 standard library and numpy are used.

Layout reminders (all little-endian):
  header  : magic "GGUF", u32 version, u64 n_tensors, u64 n_kv   (v1: u32 counts)
  kv      : gguf string key, u32 value type, value
  string  : u64 length + utf-8 bytes                              (v1: u32 length)
  array   : u32 element type, u64 count, elements                 (v1: u32 count)
  tensor  : string name, u32 n_dims, u64 dims[n_dims] (innermost first),
            u32 ggml type, u64 offset (relative to the data section)
  data    : starts at the first multiple of general.alignment (default 32)
            after the tensor infos.
A tensor with GGUF dims [ne0, ne1, ...] is returned as a numpy array of shape
(..., ne1, ne0): row-major, ne0 contiguous.
"""

import mmap
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, \
    T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(13)

_SCALAR_FMT = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
    T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?",
    T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}
_SCALAR_NP = {
    T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2",
    T_UINT32: "<u4", T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: "<u1",
    T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8",
}

# ggml tensor types (ggml.h enum ggml_type)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1 = 0, 1, 2, 3
GGML_Q5_0, GGML_Q5_1, GGML_Q8_0, GGML_Q8_1 = 6, 7, 8, 9
GGML_Q2_K, GGML_Q3_K, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K, GGML_Q8_K = 10, 11, 12, 13, 14, 15
GGML_I8, GGML_I16, GGML_I32, GGML_I64, GGML_F64 = 24, 25, 26, 27, 28
GGML_BF16 = 30
GGML_IQ4_NL, GGML_IQ4_XS = 20, 23

TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
    9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}

QK_K = 256

# (elements per block, bytes per block) for the types we can decode
BLOCK_INFO = {
    GGML_F32: (1, 4),
    GGML_F16: (1, 2),
    GGML_BF16: (1, 2),
    GGML_F64: (1, 8),
    GGML_Q4_0: (32, 2 + 16),
    GGML_Q4_1: (32, 2 + 2 + 16),
    GGML_Q5_0: (32, 2 + 4 + 16),
    GGML_Q5_1: (32, 2 + 2 + 4 + 16),
    GGML_Q8_0: (32, 2 + 32),
    GGML_Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),
    GGML_Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    GGML_Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    GGML_Q3_K: (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    GGML_IQ4_NL: (32, 2 + 16),
    GGML_IQ4_XS: (QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
}


class GGUFError(Exception):
    """Malformed file."""


class UnsupportedError(Exception):
    """Valid file, but something this reference does not implement."""


def type_name(t):
    return TYPE_NAMES.get(t, "type#%d" % t)


# ----------------------------------------------------------------------------
# Dequantization. Every function takes a 1-D uint8 array holding whole blocks
# and returns a 1-D float64 array of the decoded elements, in order.
# ----------------------------------------------------------------------------

def _f16(col):
    """(nb, 2) uint8 -> (nb,) float64 from IEEE half little-endian."""
    return np.ascontiguousarray(col).view("<f2").reshape(-1).astype(np.float64)


def _blocks(raw, t):
    qk, bs = BLOCK_INFO[t]
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % bs:
        raise GGUFError("%s data of %d bytes is not a whole number of %d-byte blocks"
                        % (type_name(t), raw.size, bs))
    return raw.reshape(-1, bs)


def dequant_f32(raw):
    return np.asarray(raw, dtype=np.uint8).view("<f4").astype(np.float64)


def dequant_f16(raw):
    return np.asarray(raw, dtype=np.uint8).view("<f2").astype(np.float64)


def dequant_bf16(raw):
    u = np.asarray(raw, dtype=np.uint8).view("<u2").astype(np.uint32) << 16
    return u.view(np.float32).astype(np.float64)


def dequant_f64(raw):
    return np.asarray(raw, dtype=np.uint8).view("<f8").astype(np.float64)


def _nibbles_32(qs):
    """(nb, 16) packed bytes -> (nb, 32) values: low nibbles are elements
    0..15, high nibbles elements 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int64)


def _fifth_bits_32(qh4):
    """(nb, 4) bytes = u32 little-endian; bit j is the high bit of element j."""
    qh = np.ascontiguousarray(qh4).view("<u4").reshape(-1, 1).astype(np.int64)
    return (qh >> np.arange(32, dtype=np.int64)[None, :]) & 1


def dequant_q4_0(raw):
    b = _blocks(raw, GGML_Q4_0)
    d = _f16(b[:, 0:2])
    q = _nibbles_32(b[:, 2:18]) - 8
    return (q * d[:, None]).reshape(-1)


def dequant_q4_1(raw):
    b = _blocks(raw, GGML_Q4_1)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles_32(b[:, 4:20])
    return (q * d[:, None] + m[:, None]).reshape(-1)


def dequant_q5_0(raw):
    b = _blocks(raw, GGML_Q5_0)
    d = _f16(b[:, 0:2])
    q = (_nibbles_32(b[:, 6:22]) | (_fifth_bits_32(b[:, 2:6]) << 4)) - 16
    return (q * d[:, None]).reshape(-1)


def dequant_q5_1(raw):
    b = _blocks(raw, GGML_Q5_1)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles_32(b[:, 8:24]) | (_fifth_bits_32(b[:, 4:8]) << 4)
    return (q * d[:, None] + m[:, None]).reshape(-1)


def dequant_q8_0(raw):
    b = _blocks(raw, GGML_Q8_0)
    d = _f16(b[:, 0:2])
    q = np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.int64)
    return (q * d[:, None]).reshape(-1)


def _k_scales_mins(s):
    """Unpack the 12-byte 6-bit scale/min field of Q4_K/Q5_K.
    s: (nb, 12) uint8 -> (sc, m) each (nb, 8) int64."""
    s = s.astype(np.int64)
    sc = np.empty((s.shape[0], 8), dtype=np.int64)
    m = np.empty((s.shape[0], 8), dtype=np.int64)
    sc[:, 0:4] = s[:, 0:4] & 63
    m[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def dequant_q4_k(raw):
    b = _blocks(raw, GGML_Q4_K)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, m = _k_scales_mins(b[:, 4:16])
    qs = b[:, 16:144].reshape(nb, 4, 1, 32)
    # each 64-element chunk k: 32 low nibbles (sub-block 2k), then 32 high nibbles (2k+1)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32)     # uint8
    y = (d[:, None] * sc)[:, :, None] * q
    y -= (dmin[:, None] * m)[:, :, None]
    return y.reshape(-1)


def dequant_q5_k(raw):
    b = _blocks(raw, GGML_Q5_K)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, m = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48].astype(np.int64)           # (nb, 32)
    qs = b[:, 48:176].reshape(nb, 4, 32)        # 4 chunks of 64 elements
    lo = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32).astype(np.int64)
    # sub-block s (0..7) takes its 5th bit from bit s of qh[l]
    hi = (qh[:, None, :] >> np.arange(8, dtype=np.int64)[None, :, None]) & 1
    q = lo | (hi << 4)
    y = (d[:, None] * sc)[:, :, None] * q - (dmin[:, None] * m)[:, :, None]
    return y.reshape(-1)


def dequant_q6_k(raw):
    b = _blocks(raw, GGML_Q6_K)
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 64)
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float64)  # (nb, 16)
    d = _f16(b[:, 208:210])
    # within each 128-element half, group g (32 elements each):
    #   g0: ql[0:32] low nibble,  qh bits 0-1
    #   g1: ql[32:64] low nibble, qh bits 2-3
    #   g2: ql[0:32] high nibble, qh bits 4-5
    #   g3: ql[32:64] high nibble, qh bits 6-7
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)                        # (nb, 2, 128) uint8
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    high = ((qh >> shifts) & 3).reshape(nb, 2, 128)
    q = (low | (high << 4)).view(np.int8) - np.int8(32)                       # -32..31
    # one int8 scale per 16 consecutive elements
    y = (d[:, None] * scales)[:, :, None] * q.reshape(nb, 16, 16)
    return y.reshape(-1)


def dequant_q3_k(raw):
    # hmask[32] qs[64] scales[12] d: 16 sub-blocks of 16, x = d * (sc - 32) * q, q in -4..3
    b = _blocks(raw, GGML_Q3_K)
    nb = b.shape[0]
    hmask = b[:, 0:32].astype(np.int64)
    qs = b[:, 32:96].reshape(nb, 2, 32).astype(np.int64)
    s = b[:, 96:108].astype(np.int64)
    d = _f16(b[:, 108:110])
    # scale j: low 4 bits = nibble (j < 8: low, else high) of byte j % 8,
    #          high 2 bits = bits 2*(j // 4) of byte 8 + j % 4
    j = np.arange(16)
    lo = np.where(j < 8, s[:, j % 8] & 0x0F, s[:, j % 8] >> 4)
    hi = (s[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    sc = (lo | (hi << 4)) - 32                                            # (nb, 16)
    # element e = 128h + 32p + l (l < 32): plane p of qs[h][l], high bit e // 32 of hmask[l]
    e = np.arange(256)
    h, p, l = e // 128, (e % 128) // 32, e % 32
    low2 = (qs[:, h, l] >> (2 * p)) & 3
    high = (hmask[:, l] >> (e // 32)) & 1
    q = low2 - 4 * (1 - high)
    y = (d[:, None] * sc)[:, e // 16] * q
    return y.reshape(-1)


KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                          1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int64)


def dequant_iq4_nl(raw):
    # d, qs[16]: x[i] = d * KVALUES[nibble], nibbles ordered as Q4_0
    b = _blocks(raw, GGML_IQ4_NL)
    d = _f16(b[:, 0:2])
    return (d[:, None] * KVALUES_IQ4NL[_nibbles_32(b[:, 2:18])]).reshape(-1)


def dequant_iq4_xs(raw):
    # d, scales_h (u16), scales_l[4], qs[128]: 8 sub-blocks of 32,
    # x = d * (ls - 32) * KVALUES[nibble], ls = 4 bits of scales_l + 2 bits of scales_h
    b = _blocks(raw, GGML_IQ4_XS)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    sh = np.ascontiguousarray(b[:, 2:4]).view("<u2").reshape(-1).astype(np.int64)
    sl = b[:, 4:8].astype(np.int64)
    ib = np.arange(8)
    ls = ((sl[:, ib // 2] >> (4 * (ib % 2))) & 0x0F) | (((sh[:, None] >> (2 * ib)) & 3) << 4)
    q = _nibbles_32(b[:, 8:136].reshape(nb * 8, 16)).reshape(nb, 8, 32)
    y = (d[:, None] * (ls - 32))[:, :, None] * KVALUES_IQ4NL[q]
    return y.reshape(-1)


DEQUANT = {
    GGML_F32: dequant_f32,
    GGML_F16: dequant_f16,
    GGML_BF16: dequant_bf16,
    GGML_F64: dequant_f64,
    GGML_Q4_0: dequant_q4_0,
    GGML_Q4_1: dequant_q4_1,
    GGML_Q5_0: dequant_q5_0,
    GGML_Q5_1: dequant_q5_1,
    GGML_Q8_0: dequant_q8_0,
    GGML_Q4_K: dequant_q4_k,
    GGML_Q5_K: dequant_q5_k,
    GGML_Q6_K: dequant_q6_k,
    GGML_Q3_K: dequant_q3_k,
    GGML_IQ4_NL: dequant_iq4_nl,
    GGML_IQ4_XS: dequant_iq4_xs,
}


def dequantize(raw, ggml_type):
    fn = DEQUANT.get(ggml_type)
    if fn is None:
        raise UnsupportedError("tensor type %s is not supported by the reference"
                               % type_name(ggml_type))
    return fn(raw)


def tensor_nbytes(ggml_type, dims):
    if ggml_type not in BLOCK_INFO:
        raise UnsupportedError("tensor type %s is not supported by the reference"
                               % type_name(ggml_type))
    qk, bs = BLOCK_INFO[ggml_type]
    n = 1
    for x in dims:
        n *= int(x)
    if dims and int(dims[0]) % qk:
        raise GGUFError("row length %d is not a multiple of the %s block size %d"
                        % (dims[0], type_name(ggml_type), qk))
    return n // qk * bs


# ----------------------------------------------------------------------------
# GGUF container
# ----------------------------------------------------------------------------

class TensorInfo(object):
    __slots__ = ("name", "dims", "type", "offset", "abs_offset", "nbytes")

    def __init__(self, name, dims, ttype, offset):
        self.name = name
        self.dims = tuple(int(x) for x in dims)   # GGUF order: innermost first
        self.type = ttype
        self.offset = offset
        self.abs_offset = None
        self.nbytes = None

    @property
    def shape(self):
        """numpy (row-major) shape: dims reversed."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self):
        n = 1
        for x in self.dims:
            n *= x
        return n

    def __repr__(self):
        return "TensorInfo(%r, dims=%r, type=%s, offset=%d)" % (
            self.name, self.dims, type_name(self.type), self.offset)


class GGUFFile(object):
    """Parsed GGUF file.

    .version, .metadata (key -> python value; arrays are lists, or numpy arrays
    for numeric element types), .metadata_types (key -> (type, elem_type|None)),
    .tensors (name -> TensorInfo, in file order), .alignment, .data_offset.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            try:
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # empty file
                self._buf = b""
        self._pos = 0
        self._parse()

    # -- low-level readers --------------------------------------------------
    def _need(self, n):
        if self._pos + n > len(self._buf):
            raise GGUFError("unexpected end of file at offset %d (need %d bytes, file is %d)"
                            % (self._pos, n, len(self._buf)))

    def _scalar(self, fmt):
        n = struct.calcsize(fmt)
        self._need(n)
        v = struct.unpack_from(fmt, self._buf, self._pos)[0]
        self._pos += n
        return v

    def _count(self):
        return self._scalar("<I" if self.version == 1 else "<Q")

    def _string(self):
        n = self._count()
        self._need(n)
        raw = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="surrogateescape")

    def _value(self, vtype):
        if vtype == T_STRING:
            return self._string()
        if vtype == T_ARRAY:
            etype = self._scalar("<I")
            n = self._count()
            if etype in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[etype])
                self._need(n * dt.itemsize)
                arr = np.frombuffer(self._buf, dtype=dt, count=n, offset=self._pos).copy()
                self._pos += n * dt.itemsize
                if etype == T_BOOL:
                    arr = arr.astype(bool)
                return arr
            if etype in (T_STRING, T_ARRAY):
                return [self._value(etype) for _ in range(n)]
            raise GGUFError("unknown array element type %d" % etype)
        if vtype in _SCALAR_FMT:
            return self._scalar(_SCALAR_FMT[vtype])
        raise GGUFError("unknown metadata value type %d" % vtype)

    # -- structure ----------------------------------------------------------
    def _parse(self):
        self._need(4)
        magic = bytes(self._buf[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError("not a GGUF file (magic %r)" % magic)
        self._pos = 4
        self.version = self._scalar("<I")
        if self.version not in (1, 2, 3):
            raise UnsupportedError("GGUF version %d is not supported" % self.version)
        n_tensors = self._count()
        n_kv = self._count()

        self.metadata = {}
        self.metadata_types = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = self._scalar("<I")
            start = self._pos
            val = self._value(vtype)
            etype = None
            if vtype == T_ARRAY:
                etype = struct.unpack_from("<I", self._buf, start)[0]
            self.metadata[key] = val
            self.metadata_types[key] = (vtype, etype)

        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("<I")
            if n_dims > 8:
                raise GGUFError("tensor %r has %d dims" % (name, n_dims))
            dims = [self._count() for _ in range(n_dims)]
            ttype = self._scalar("<I")
            offset = self._scalar("<Q")
            if name in self.tensors:
                raise GGUFError("duplicate tensor name %r" % name)
            self.tensors[name] = TensorInfo(name, dims, ttype, offset)

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        align = int(align)
        if align <= 0 or (align & (align - 1)):
            raise GGUFError("general.alignment %d is not a power of two" % align)
        self.alignment = align
        self.data_offset = (self._pos + align - 1) // align * align

        for ti in self.tensors.values():
            ti.abs_offset = self.data_offset + ti.offset
            if ti.type in BLOCK_INFO:
                ti.nbytes = tensor_nbytes(ti.type, ti.dims)
                if ti.abs_offset + ti.nbytes > len(self._buf):
                    raise GGUFError("tensor %r (%d bytes at %d) extends past end of file (%d)"
                                    % (ti.name, ti.nbytes, ti.abs_offset, len(self._buf)))

    # -- access -------------------------------------------------------------
    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def raw(self, name):
        """uint8 view of a tensor's bytes."""
        ti = self.tensors[name]
        if ti.nbytes is None:
            raise UnsupportedError("tensor %r has type %s, not supported by the reference"
                                   % (name, type_name(ti.type)))
        return np.frombuffer(self._buf, dtype=np.uint8, count=ti.nbytes, offset=ti.abs_offset)

    def tensor(self, name):
        """Dequantized tensor as float64, numpy shape = reversed GGUF dims."""
        ti = self.tensors[name]
        vals = dequantize(self.raw(name), ti.type)
        return vals.reshape(ti.shape)

    def __contains__(self, name):
        return name in self.tensors

    def close(self):
        if isinstance(self._buf, mmap.mmap):
            try:
                self._buf.close()
            except BufferError:
                pass  # numpy views still alive; the mapping goes away with them


def open_gguf(path):
    return GGUFFile(path)

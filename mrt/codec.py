"""Pixel codecs of the EIGER stream: raw, ``lz4<`` and bitshuffle/LZ4 (pure).

The EIGER stream v1 names a blob's encoding with the grammar
``[bs<BITS>[-]][lz4](<|>)``.  Three layouts occur:

* ``<``: raw little-endian pixels;
* ``lz4<``: one raw LZ4 block, no header, no size prefix;
* ``bs8-lz4<``, ``bs16-lz4<``, ``bs32-lz4<``: the chunk format of the HDF5
  bitshuffle filter (id 32008, LZ4 mode): a 12-byte big-endian header
  (u64 total uncompressed bytes, u32 block size in bytes), then for every
  block a u32 big-endian compressed length and an LZ4 block of the
  bit-transposed block; the last ``nelem % 8`` elements are appended
  uncompressed.

bitshuffle/LZ4 blobs are encoded and decoded by the ``bitshuffle`` package
(the maintained C implementation of the HDF5 filter, SIMD bit transposes and
LZ4): a 4M frame takes a few milliseconds where a numpy transpose took
200.  Before a blob is handed to the C code its block structure is walked
here, so a corrupt or hostile blob is a :class:`CodecError`, never a read
past its end.  ``lz4<`` is the ``lz4`` package's block codec.  The numpy
:func:`bitshuffle` / :func:`bitunshuffle` remain as the reference transpose
the tests check the library against.  Nothing here touches sockets, files
or clocks.  Errors are :class:`CodecError`, never another exception.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

import bitshuffle as bshuf
import lz4.block
import numpy as np

#: bitshuffle's default target block size in bytes (8192, as DECTRIS sends)
DEFAULT_BLOCK_BYTES = 8192
BSLZ4_HEADER = struct.Struct(">QI")
_LEN = struct.Struct(">I")

ENCODING_RE = re.compile(r"^(?:bs(8|16|32)-?)?(lz4)?([<>])$")

DTYPES = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}
TYPE_BITS = {"uint8": 8, "uint16": 16, "uint32": 32}


class CodecError(ValueError):
    """A blob that does not decode as its encoding says."""


@dataclass(frozen=True)
class Encoding:
    """A parsed encoding string."""

    text: str
    bitshuffle_bits: int  # 0 = no bitshuffle
    lz4: bool
    little_endian: bool

    @property
    def is_bslz4(self) -> bool:
        return self.bitshuffle_bits > 0 and self.lz4


@functools.lru_cache(maxsize=64)
def _parse_encoding(text: str) -> Encoding:
    m = ENCODING_RE.match(text)
    if not m:
        raise CodecError(f"unknown encoding {text!r}")
    bits = int(m.group(1)) if m.group(1) else 0
    return Encoding(text, bits, bool(m.group(2)), m.group(3) == "<")


def parse_encoding(text: str) -> Encoding:
    """``"bs16-lz4<"`` -> :class:`Encoding`; :class:`CodecError` if not in the grammar."""
    if not isinstance(text, str):
        raise CodecError(f"encoding is not a string: {text!r}")
    return _parse_encoding(text)


def encoding_name(kind: str, bits: int) -> str:
    """``("bslz4", 16)`` -> ``"bs16-lz4<"``; kinds ``bslz4``, ``lz4``, ``raw``."""
    if kind == "bslz4":
        return f"bs{bits}-lz4<"
    if kind == "lz4":
        return "lz4<"
    if kind == "raw":
        return "<"
    raise CodecError(f"unknown encoding kind {kind!r}")


# -- bit transpose ----------------------------------------------------------
def bitshuffle(data: np.ndarray, elem: int) -> bytes:
    """Bit-transpose ``data`` (bytes of ``n`` elements, n a multiple of 8).

    Output row ``8*b + k`` (byte b of an element, bit k from the LSB) holds
    bit k of byte b of every element, element i at bit ``i % 8`` of byte
    ``i // 8``: bitshuffle's ``trans_bit_elem``.
    """
    a = np.frombuffer(data, dtype=np.uint8).reshape(-1, elem)
    bits = np.unpackbits(a, axis=1, bitorder="little")  # (n, 8*elem)
    return np.packbits(bits.T, axis=1, bitorder="little").tobytes()


def bitunshuffle(data: bytes | memoryview, elem: int) -> bytes:
    """Inverse of :func:`bitshuffle`."""
    rows = np.frombuffer(data, dtype=np.uint8).reshape(8 * elem, -1)
    bits = np.unpackbits(rows, axis=1, bitorder="little")  # (8*elem, n)
    return np.packbits(bits.T, axis=1, bitorder="little").tobytes()


def _block_elems(elem: int, block_bytes: int) -> int:
    n = max(8, (block_bytes // elem) // 8 * 8)
    return n


# -- bitshuffle + LZ4 (HDF5 filter 32008 chunk format) ------------------------
_ELEM_DTYPES = {1: np.dtype("u1"), 2: np.dtype("u2"), 4: np.dtype("u4"), 8: np.dtype("u8")}


def bslz4_compress(raw: bytes | memoryview | np.ndarray, elem: int, block_bytes: int = 0) -> bytes:
    """Compress ``raw`` (whole elements of ``elem`` bytes) to a bslz4 blob with header."""
    buf = memoryview(np.ascontiguousarray(raw)).cast("B") if isinstance(raw, np.ndarray) else raw
    buf = memoryview(buf).cast("B")
    total = len(buf)
    if elem not in _ELEM_DTYPES or total % elem:
        raise CodecError(f"{total} bytes are not whole {elem}-byte elements")
    nb = _block_elems(elem, block_bytes or DEFAULT_BLOCK_BYTES)
    arr = np.frombuffer(buf, dtype=_ELEM_DTYPES[elem])
    body = bshuf.compress_lz4(arr, nb) if total else np.empty(0, np.uint8)
    return BSLZ4_HEADER.pack(total, nb * elem) + body.tobytes()


def bslz4_header(blob: bytes | memoryview) -> tuple[int, int]:
    """(total uncompressed bytes, block size in bytes) of a bslz4 blob."""
    if len(blob) < BSLZ4_HEADER.size:
        raise CodecError(f"bslz4 blob of {len(blob)} bytes is shorter than its header")
    return BSLZ4_HEADER.unpack_from(blob, 0)


def _check_blocks(mv: memoryview, total: int, block: int, elem: int) -> None:
    """Walk the block lengths: every block inside the blob, the tail exactly right."""
    nelem = total // elem
    nb = block // elem if block else 0
    full = nelem // nb if nb else 0
    rest = (nelem - full * nb) // 8 * 8 * elem
    blocks = full + (1 if rest else 0)
    pos = BSLZ4_HEADER.size
    end = len(mv)
    unpack = _LEN.unpack_from
    for _ in range(blocks):
        if pos + 4 > end:
            raise CodecError("bslz4 blob truncated in a block length")
        (clen,) = unpack(mv, pos)
        pos += 4
        if clen > end - pos:
            raise CodecError(f"bslz4 block length {clen} runs past the blob end")
        pos += clen
    tail = (nelem % 8) * elem
    if end - pos != tail:
        raise CodecError(f"bslz4 blob has {end - pos} trailing bytes, expected {tail}")


def bslz4_decode(blob: bytes | memoryview, elem: int, max_bytes: int = 1 << 31) -> np.ndarray:
    """Decompress a bslz4 blob (with its 12-byte header) to a 1-D array of elements."""
    mv = memoryview(blob).cast("B")
    total, block = bslz4_header(mv)
    if elem not in _ELEM_DTYPES:
        raise CodecError(f"bad element size {elem}")
    if total > max_bytes:
        raise CodecError(f"bslz4 blob claims {total} bytes, more than the {max_bytes} allowed")
    if total % elem:
        raise CodecError(f"bslz4 total {total} is not a multiple of the element size {elem}")
    if total and (block == 0 or block % (8 * elem)):
        raise CodecError(f"bslz4 block size {block} is not a multiple of {8 * elem}")
    _check_blocks(mv, total, block, elem)
    dt = _ELEM_DTYPES[elem]
    if not total:
        return np.empty(0, dt)
    body = np.frombuffer(mv, dtype=np.uint8, offset=BSLZ4_HEADER.size)
    try:
        return bshuf.decompress_lz4(body, (total // elem,), dt, block // elem)
    except (RuntimeError, ValueError) as exc:
        raise CodecError(f"bslz4 block does not decompress: {exc}") from None


def bslz4_decompress(blob: bytes | memoryview, elem: int, max_bytes: int = 1 << 31) -> bytes:
    """Decompress a bslz4 blob (with its 12-byte header) to raw bytes."""
    return bslz4_decode(blob, elem, max_bytes).tobytes()


# -- plain LZ4 ----------------------------------------------------------------
def lz4_compress(raw: bytes | memoryview) -> bytes:
    return lz4.block.compress(bytes(raw), store_size=False)


def lz4_decompress(blob: bytes | memoryview, size: int) -> bytes:
    try:
        out = lz4.block.decompress(bytes(blob), uncompressed_size=size)
    except Exception as exc:  # noqa: BLE001 - any lz4 failure is corrupt input
        raise CodecError(f"lz4 block does not decompress: {exc}") from None
    if len(out) != size:
        raise CodecError(f"lz4 block gave {len(out)} bytes, expected {size}")
    return out


# -- whole frames ---------------------------------------------------------------
def encode_frame(pixels: np.ndarray, encoding: str) -> bytes:
    """Encode a 2-D array of uint8/16/32 pixels as ``encoding`` says."""
    enc = parse_encoding(encoding)
    dt = pixels.dtype.newbyteorder("<" if enc.little_endian else ">")
    raw = np.ascontiguousarray(pixels, dtype=dt)
    if enc.is_bslz4:
        if enc.bitshuffle_bits != raw.dtype.itemsize * 8:
            raise CodecError(f"{encoding} does not match {raw.dtype.itemsize * 8}-bit pixels")
        return bslz4_compress(raw, raw.dtype.itemsize)
    if enc.bitshuffle_bits:
        raise CodecError(f"bitshuffle without lz4 ({encoding}) is not supported")
    if enc.lz4:
        return lz4_compress(raw.tobytes())
    return raw.tobytes()


def decode_frame(blob: bytes | memoryview, encoding: str, shape: tuple[int, int], bits: int):
    """Decode a blob to a ``shape`` array of native uint pixels."""
    if bits not in DTYPES:
        raise CodecError(f"unsupported bit depth {bits}")
    enc = parse_encoding(encoding)
    elem = bits // 8
    size = int(np.prod(shape, dtype=np.int64)) * elem
    if enc.is_bslz4:
        total, _ = bslz4_header(blob)
        if total != size:
            raise CodecError(f"bslz4 blob holds {total} bytes, the frame needs {size}")
        arr = bslz4_decode(blob, elem, max_bytes=size)
        dt = DTYPES[bits].newbyteorder("<" if enc.little_endian else ">")
        arr = arr.view(dt).reshape(shape)
        return arr if dt.isnative else arr.astype(DTYPES[bits].newbyteorder("="))
    elif enc.bitshuffle_bits:
        raise CodecError(f"bitshuffle without lz4 ({encoding}) is not supported")
    elif enc.lz4:
        raw = lz4_decompress(blob, size)
    else:
        raw = bytes(blob)
        if len(raw) != size:
            raise CodecError(f"raw frame of {len(raw)} bytes, expected {size}")
    dt = DTYPES[bits].newbyteorder("<" if enc.little_endian else ">")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(DTYPES[bits].newbyteorder("="))


def guess_encoding(blob: bytes | memoryview, shape: tuple[int, int], bits: int) -> str:
    """Best guess of a blob's encoding from its size and header (clients use it).

    Raw when the length equals the frame size; bslz4 when the 12-byte header
    names the frame size and a valid block size; otherwise ``lz4<``.
    """
    elem = bits // 8
    size = int(np.prod(shape, dtype=np.int64)) * elem
    if len(blob) == size:
        return "<"
    if len(blob) >= BSLZ4_HEADER.size:
        total, block = BSLZ4_HEADER.unpack_from(blob, 0)
        if total == size and block and block % (8 * elem) == 0:
            return encoding_name("bslz4", bits)
    return "lz4<"

"""mrt codecs: bslz4 (bitshuffle library) against filter 32008 and a reference transpose."""

from __future__ import annotations

import struct

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrt import codec

pytestmark = pytest.mark.timeout(120)

BITS = (8, 16, 32)


def test_bitshuffle_layout_by_hand():
    # 8 uint8 elements: bit row k holds bit k of every element, element i at bit i
    data = np.array([1, 0, 0, 0, 0, 0, 0, 0x80], dtype=np.uint8).tobytes()
    out = codec.bitshuffle(data, 1)
    assert out == bytes([0x01, 0, 0, 0, 0, 0, 0, 0x80])
    assert codec.bitunshuffle(out, 1) == data


@given(
    st.sampled_from(BITS),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_frame_round_trips_every_encoding(bits, h, w, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << bits, size=(h, w), dtype=np.uint64).astype(codec.DTYPES[bits])
    for kind in ("bslz4", "lz4", "raw"):
        enc = codec.encoding_name(kind, bits)
        blob = codec.encode_frame(a, enc)
        assert codec.guess_encoding(blob, (h, w), bits) in (enc, "lz4<", "<")
        back = codec.decode_frame(blob, enc, (h, w), bits)
        assert back.dtype == a.dtype and (back == a).all()


@given(st.binary(max_size=400), st.sampled_from(BITS), st.integers(1, 20), st.integers(1, 20))
@settings(max_examples=300, deadline=None)
def test_garbage_gives_codec_errors_only(blob, bits, h, w):
    for enc in (f"bs{bits}-lz4<", "lz4<", "<"):
        try:
            out = codec.decode_frame(blob, enc, (h, w), bits)
        except codec.CodecError:
            continue
        assert out.shape == (h, w)


@given(st.text(max_size=12))
def test_encoding_grammar(text):
    try:
        e = codec.parse_encoding(text)
    except codec.CodecError:
        return
    assert e.text == text and text[-1] in "<>"


def test_known_encodings_parse():
    assert codec.parse_encoding("bs16-lz4<").is_bslz4
    assert codec.parse_encoding("bs32lz4<").bitshuffle_bits == 32
    assert codec.parse_encoding("lz4<").lz4 and not codec.parse_encoding("lz4<").is_bslz4
    assert not codec.parse_encoding("<").lz4
    with pytest.raises(codec.CodecError):
        codec.parse_encoding("bs12-lz4<")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (48, 64), (97, 131)])
def test_bslz4_matches_the_hdf5_filter(tmp_path, bits, shape):
    """Our blob read through hdf5plugin's filter, and the filter's chunk through our decoder."""
    rng = np.random.default_rng(bits * 1000 + shape[0])
    a = rng.poisson(2.0, size=shape).astype(codec.DTYPES[bits])
    a.flat[0] = (1 << bits) - 1
    blob = codec.encode_frame(a, f"bs{bits}-lz4<")
    assert codec.bslz4_header(blob)[0] == a.nbytes
    path = tmp_path / "x.h5"
    opts = hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
    with h5py.File(path, "w") as f:
        d = f.create_dataset("ours", shape=(1, *shape), dtype=a.dtype, chunks=(1, *shape), **opts)
        d.id.write_direct_chunk((0, 0, 0), blob)
        f.create_dataset("theirs", data=a[None], chunks=(1, *shape), **opts)
    with h5py.File(path, "r") as f:
        assert (f["ours"][0] == a).all()
        _, theirs = f["theirs"].id.read_direct_chunk((0, 0, 0))
    assert (codec.decode_frame(theirs, f"bs{bits}-lz4<", shape, bits) == a).all()


def test_bslz4_rejects_bad_headers():
    a = np.arange(64, dtype="<u2").reshape(8, 8)
    blob = codec.encode_frame(a, "bs16-lz4<")
    with pytest.raises(codec.CodecError):
        codec.decode_frame(blob[:-3], "bs16-lz4<", (8, 8), 16)  # truncated
    with pytest.raises(codec.CodecError):
        codec.decode_frame(blob, "bs16-lz4<", (8, 9), 16)  # wrong frame size
    bad_block = blob[:8] + (7).to_bytes(4, "big") + blob[12:]
    with pytest.raises(codec.CodecError):
        codec.decode_frame(bad_block, "bs16-lz4<", (8, 8), 16)
    huge = (1 << 40).to_bytes(8, "big") + blob[8:]
    with pytest.raises(codec.CodecError):
        codec.bslz4_decompress(huge, 2, max_bytes=1 << 20)


def _reference_decode(blob: bytes, elem: int) -> bytes:
    """The chunk format decoded by hand: lz4 blocks and the numpy bit transpose."""
    import lz4.block

    total, block = codec.bslz4_header(blob)
    pos, out = 12, b""
    nelem = total // elem
    sizes = [block] * (nelem // (block // elem))
    rest = nelem - len(sizes) * (block // elem)
    if rest // 8:
        sizes.append(rest // 8 * 8 * elem)
    for size in sizes:
        (clen,) = struct.unpack_from(">I", blob, pos)
        plain = lz4.block.decompress(blob[pos + 4 : pos + 4 + clen], uncompressed_size=size)
        out += codec.bitunshuffle(plain, elem)
        pos += 4 + clen
    return out + blob[pos:]


@pytest.mark.parametrize("elem,n", [(1, 9000), (2, 4096 * 3 + 13), (4, 77), (2, 5)])
def test_library_blobs_match_the_reference_transpose(elem, n):
    raw = np.random.default_rng(elem).integers(0, 50, n * elem, dtype=np.uint8).tobytes()
    blob = codec.bslz4_compress(raw, elem)
    assert _reference_decode(blob, elem) == raw
    assert codec.bslz4_decompress(blob, elem) == raw


@given(st.integers(0, 10**6), st.integers(1, 255), st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_corrupted_blobs_never_crash(pos_seed, xor, cut):
    src = np.random.default_rng(1).poisson(2, (64, 96)).astype("<u2")
    blob = bytearray(codec.encode_frame(src, "bs16-lz4<"))
    blob[12 + pos_seed % (len(blob) - 12)] ^= xor
    if cut:
        del blob[-cut:]
    try:
        out = codec.decode_frame(bytes(blob), "bs16-lz4<", (64, 96), 16)
    except codec.CodecError:
        return
    assert out.shape == (64, 96)

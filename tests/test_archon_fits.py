"""FITS output: streamed block-by-block writing equals the whole-array writer; atomicity."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from archonsrv import archon as A
from archonsrv.camera import fitsio

pytestmark = pytest.mark.timeout(60)


@settings(max_examples=25, deadline=None)
@given(
    bitpix=st.sampled_from([16, 32]),
    shift=st.integers(0, 20),
    width=st.integers(1, 90),
    height=st.integers(1, 40),
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
)
def test_streamed_equals_whole(tmp_path_factory, bitpix, shift, width, height, cuts, seed):
    d = tmp_path_factory.mktemp("fits")
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if bitpix == 16 else np.uint32
    image = rng.integers(0, np.iinfo(dtype).max, size=(height, width), dtype=dtype, endpoint=True)
    wire = A.fetch_wire(image, A.blocks_for(image.nbytes))
    cards = [("OBSERVER", "x", "who"), ("EXPTIME", 5, "ms")]
    f = fitsio.AtomicFits(d, "s.fits")
    s = f.stream_image(width, height, bitpix, shift, cards)
    pos, i = 0, 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        s.feed(wire[pos : pos + n, A.BLOCK_HEADER :])
        pos += n
        i += 1
    streamed = s.finish()
    g = fitsio.AtomicFits(d, "w.fits")
    g.primary(fitsio.pixels(image, bitpix, shift), cards)
    whole = g.commit()
    with fits.open(streamed) as a, fits.open(whole) as b:
        assert np.array_equal(a[0].data, b[0].data)
        assert a[0].header["BITPIX"] == bitpix and a[0].header["OBSERVER"] == "x"
        expect = image if bitpix == 16 else image >> np.uint32(shift)
        assert np.array_equal(a[0].data, expect)
    assert streamed.stat().st_size % 2880 == 0
    assert not list(d.glob(".*.part"))
    for path in (streamed, whole):
        assert_checksums(path)


def assert_checksums(path) -> None:
    """Every HDU has CHECKSUM and DATASUM, and astropy finds both correct."""
    with fits.open(path, checksum=True) as hdul:
        for hdu in hdul:
            assert "CHECKSUM" in hdu.header and "DATASUM" in hdu.header
            assert hdu.verify_datasum() == 1 and hdu.verify_checksum() == 1, path


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_checksum_in_pieces_equals_a_word_sum(data, cuts):
    c = fitsio.Checksum()
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        c.add(data[pos : pos + n])
        pos += n
        i += 1
    padded = data + bytes(-len(data) % 4)
    total = sum(int.from_bytes(padded[k : k + 4], "big") for k in range(0, len(padded), 4))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    assert c.value == total
    code = fitsio.encode_checksum(c.value)
    assert len(code) == 16 and code.isalnum()  # no punctuation (the convention's exclusions)


def test_every_hdu_has_checksums(tmp_path):
    f = fitsio.AtomicFits(tmp_path, "m.fits")
    f.primary(None, [("OBSERVER", "x", "who")])
    f.extension(np.arange(12, dtype=np.uint16).reshape(3, 4), [("EXTNAME", "1", "amp")])
    f.extension(np.arange(6, dtype=np.uint32).reshape(2, 3), [("EXTNAME", "2", "amp")])
    path = f.commit()
    assert_checksums(path)


def test_failed_stream_leaves_nothing(tmp_path):
    f = fitsio.AtomicFits(tmp_path, "x.fits")
    s = f.stream_image(10, 10, 16, 0, [])
    s.feed(np.zeros((0, A.BLOCK), np.uint8))
    with pytest.raises(fitsio.FitsWriteError, match="short"):
        s.finish()
    assert list(tmp_path.iterdir()) == []


def test_existing_name_gets_a_counter(tmp_path):
    (tmp_path / "a.fits").write_bytes(b"")
    f = fitsio.AtomicFits(tmp_path, "a.fits")
    f.primary(np.zeros((2, 2), np.uint16), [])
    assert f.commit().name == "a-1.fits"
    assert (tmp_path / "a.fits").read_bytes() == b""

"""Pure cores of archonsrv: config, Archon framing, FETCH blocks, ACF geometry, replies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archonsrv import config as C
from archonsrv import protocol as P
from common.config import ConfigError

pytestmark = pytest.mark.timeout(60)

BASE_CFG = "BLKPORT=3031\nNBPORT=3030\nLOGPATH=/tmp\n"

# -- configuration ------------------------------------------------------------


def test_config_defaults_and_overrides():
    cfg = C.parse(BASE_CFG)
    assert (cfg.imdir, cfg.basename, cfg.autodir, cfg.hdr_shift) == ("/tmp", "image", True, 16)
    assert (cfg.shutenable_enable, cfg.shutenable_disable) == ("1", "0")
    assert cfg.trigin_expose_disable == "0"
    assert not cfg.longerror and not cfg.amps_as_cube and not cfg.daemon
    assert not cfg.async_enabled
    cfg = C.parse(
        BASE_CFG + "IMDIR=/data # images\nLONGERROR=true\nTM_ZONE=local\n"
        "ASYNCPORT=1234\nASYNCGROUP=239.1.1.234\nDEFAULT_FIRMWARE=(0 /a/tim.acf)\n"
    )
    assert cfg.imdir == "/data" and cfg.longerror and cfg.tm_zone == "local"
    assert cfg.async_enabled and cfg.arrays["DEFAULT_FIRMWARE"] == {"0": "/a/tim.acf"}
    assert not C.parse(BASE_CFG + "ASYNCPORT=1234\nASYNCGROUP=none\n").async_enabled


@pytest.mark.parametrize(
    "extra",
    [
        "BLKPORT=0\n",
        "BLKPORT=70000\n",
        "HDR_SHIFT=32\n",
        "AUTODIR=maybe\n",
        "TM_ZONE=mars\n",
        "ASYNCGROUP=not-an-ip\nASYNCPORT=1\n",
        "BASENAME=a/b\n",
        "READOUT_TIME=fast\n",
        "NBPORT=3031\n",
        "just words\n",
    ],
)
def test_config_rejects(extra):
    with pytest.raises(ConfigError):
        C.parse(BASE_CFG + extra)


def test_config_requires_ports_and_logpath():
    for missing in ("BLKPORT", "NBPORT", "LOGPATH"):
        text = "".join(line + "\n" for line in BASE_CFG.split() if not line.startswith(missing))
        with pytest.raises(ConfigError, match=missing):
            C.parse(text)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    blk=st.integers(1, 65535),
    nb=st.integers(1, 65535),
    shift=st.integers(0, 31),
    readout=st.integers(0, 100000),
    base=_names,
    longerror=st.booleans(),
    comment=st.text(alphabet="abc #=()", max_size=10),
)
def test_config_render_parse_roundtrip(blk, nb, shift, readout, base, longerror, comment):
    if blk == nb:
        nb = blk % 65535 + 1
    text = C.render(
        C.DEMO_CFG.read_text(),
        BLKPORT=blk,
        NBPORT=nb,
        HDR_SHIFT=f"{shift} # {comment}",
        READOUT_TIME=readout,
        BASENAME=base,
        LONGERROR="true" if longerror else "false",
    )
    cfg = C.parse(text, "/etc/x/demo.cfg")
    assert (cfg.blkport, cfg.nbport, cfg.hdr_shift) == (blk, nb, shift)
    assert cfg.readout_time == readout and cfg.basename == base and cfg.longerror == longerror
    assert cfg.default_firmware == "/etc/x/demo.acf"  # relative to the config file


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_config_parser_never_crashes(text):
    try:
        C.parse(text)
    except ConfigError:
        pass


# -- Archon framing -----------------------------------------------------------


@given(ref=st.integers(0, 255), cmd=st.text(alphabet="ABCDEFGHIJ0123456789 =/_", max_size=60))
def test_command_roundtrip(ref, cmd):
    wire = P.encode_command(ref, cmd)
    assert wire.startswith(b">%02X" % ref) and wire.endswith(b"\n")
    back = P.decode_command(wire[:-1])
    assert back == P.ArchonCommand(ref, cmd)


@given(ref=st.integers(0, 255), text=st.text(alphabet="ABC=0123 .", max_size=60))
def test_reply_roundtrip(ref, text):
    assert P.decode_reply(P.encode_reply(ref, text)[:-1]) == P.ArchonReply(ref, True, text)
    assert P.decode_reply(P.encode_error(ref)[:-1]) == P.ArchonReply(ref, False, "")


def test_reply_garbage_and_commands():
    for bad in (b"", b"hello", b"<G1", b">01X"):
        with pytest.raises(P.ProtocolError):
            P.decode_reply(bad)
    assert P.decode_command(b"FRAME") is None
    assert P.decode_command(b">zzFRAME") is None
    assert P.fetch_command(0xA0000000, 64) == "FETCHA000000000000040"
    assert P.parse_fetch("FETCHA000000000000040") == (0xA0000000, 64)
    assert P.parse_fetch("FETCH123") is None
    assert P.timer_text(255) == "00000000000000FF"


@settings(max_examples=80, deadline=None)
@given(
    ref=st.integers(0, 255),
    nbytes=st.integers(0, 5000),
    cuts=st.lists(st.integers(1, 3000), max_size=12),
)
def test_fetch_blocks_any_split(ref, nbytes, cuts):
    data = (np.arange(nbytes, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8).tobytes()
    blocks = P.blocks_for(nbytes)
    wire = P.encode_fetch_reply(ref, data, blocks)
    assert len(wire) == blocks * P.BLOCK_WIRE
    dec = P.FetchDecoder(ref, blocks)
    pos = 0
    for c in [*cuts, len(wire)]:
        chunk = wire[pos : pos + c]
        dec.writable()[: len(chunk)] = chunk
        dec.advance(len(chunk))
        pos += len(chunk)
        if pos >= len(wire):
            break
    assert dec.done
    out = dec.payload(nbytes).tobytes()
    assert out == data
    # padding after the data is 0xFF
    assert set(dec.payload().tobytes()[nbytes:]) <= {0xFF}


def test_fetch_detects_error_and_bad_header_at_the_block():
    wire = bytearray(P.encode_fetch_reply(7, bytes(5000), 5))
    dec = P.FetchDecoder(7, 5)
    bad = wire[: 2 * P.BLOCK_WIRE] + b"?07\n"
    dec.writable()[: len(bad)] = bad
    with pytest.raises(P.ProtocolError, match="block 2"):
        dec.advance(len(bad))
    wire[3 * P.BLOCK_WIRE + 1] = ord("9")  # wrong reference in block 3
    dec = P.FetchDecoder(7, 5)
    dec.writable()[:] = wire
    with pytest.raises(P.ProtocolError, match="block 3"):
        dec.advance(len(wire))
    # data that merely looks like a header inside a block is not touched
    payload = b"<07:" * 256 * 2
    dec = P.FetchDecoder(7, 2)
    w = P.encode_fetch_reply(7, payload, 2)
    dec.writable()[:] = w
    dec.advance(len(w))
    assert dec.payload().tobytes() == payload


def test_frame_roundtrip_and_newest():
    fs = P.FrameStatus(timer=0x1234, rbuf=0, wbuf=2)
    fs.buffers = [
        P.BufferStatus(1, complete=1, frame=5, base=0xA0000000, width=256, height=256),
        P.BufferStatus(2, complete=0, frame=3, lines=100),
        P.BufferStatus(3, complete=1, frame=4),
    ]
    back = P.parse_frame(P.format_frame(fs))
    assert back.timer == 0x1234 and back.wbuf == 2
    assert back.newest().index == 1
    assert back.find_frame(4).index == 3 and back.find_frame(3) is None
    assert back.writing().lines == 100
    with pytest.raises(P.ProtocolError):
        P.parse_frame("TIMER=1 BUSY")


# -- ACF and geometry ----------------------------------------------------------


def test_demo_acf_geometry():
    acf = P.parse_acf(C.DEMO_ACF.read_text(), "demo.acf")
    assert set(acf.modes) >= {"DEFAULT", "HDR", "SPLIT", "FULL"}
    assert "Expose" in acf.params() and "exptime" in acf.params()
    vals = acf.values()
    assert vals["MOD4/LVLC_V1"] == "0"  # backslash became slash
    assert vals["TAPLINE0"] == "AD5L,1.0,1000"  # quotes removed
    g = P.compute_geometry(vals, acf.modes["DEFAULT"].arch)
    assert (g.width, g.height, g.bitpix, g.activebufs) == (256, 256, 16, 3)
    assert g.amp_sections == [
        (1, 64, 1, 256),
        (65, 128, 1, 256),
        (129, 192, 1, 256),
        (193, 256, 1, 256),
    ]
    assert g.image_bytes == 256 * 256 * 2 and g.blocks == 128
    split = dict(vals, FRAMEMODE="2", LINECOUNT="128")
    g = P.compute_geometry(split, acf.modes["SPLIT"].arch)
    assert (g.width, g.height) == (128, 256)
    assert g.amp_sections == [
        (1, 64, 1, 128),
        (65, 128, 1, 128),
        (1, 64, 129, 256),
        (65, 128, 129, 256),
    ]
    g = P.compute_geometry(dict(vals, SAMPLEMODE="1"), acf.modes["HDR"].arch)
    assert g.bitpix == 32 and g.image_bytes == 256 * 256 * 4
    g = P.compute_geometry(vals, acf.modes["DEFAULT"].arch, raw=True)
    assert (g.width, g.height, g.bitpix, g.raw) == (400, 64, 16, True)
    g = P.compute_geometry(
        dict(vals, PIXELCOUNT="1050", LINECOUNT="4200"),
        {"NUM_DETECT": "1", "HORI_AMPS": "4", "VERT_AMPS": "1"},
    )
    assert (g.width, g.height) == (4200, 4200) and g.image_bytes == 35280000
    assert P.tap_gains(vals) == {4: ("1.0", "1000"), 5: ("1.0", "1000")}


@pytest.mark.parametrize(
    "text,match",
    [
        ("[CONFIG]\nA=1\n", "MODE_DEFAULT"),
        ("[SYSTEM]\nA=1\n", "CONFIG"),
        ("[CONFIG]\nA=1\n[MODE_DEFAULT]\nARCH:NUM_DETECT=1\n", "HORI_AMPS"),
        ("[CONFIG]\nA=1\n[MODE_RAW]\n", "reserved"),
        ("[CONFIG]\nA=1\n[MODE_X]\n[MODE_X]\n", "duplicate"),
        ("[CONFIG]\nA=1\n[MODE_DEFAULT]\nACF:B=2\n", "not in"),
        ("[CONFIG]\nnonsense\n", "KEY=VALUE"),
    ],
)
def test_acf_errors(text, match):
    with pytest.raises(P.AcfError, match=match):
        P.parse_acf(text)


def test_geometry_missing_key():
    acf = P.parse_acf(C.DEMO_ACF.read_text())
    vals = acf.values()
    del vals["TAPLINES"]
    with pytest.raises(P.AcfError, match="TAPLINES"):
        P.compute_geometry(vals, acf.modes["DEFAULT"].arch)


# -- camerad replies and helpers -------------------------------------------------


def test_reply_formatting():
    assert P.format_done() == "DONE"
    assert P.format_done("2000") == "2000 DONE"
    assert P.format_error("bad", longerror=False) == "ERROR"
    assert P.format_error("bad", longerror=True) == "ERROR bad"
    assert P.format_error("bad", longerror=True, value="false") == "false ERROR bad"
    assert P.split_command("exptime   2000 \r\n") == ("exptime", "2000")
    assert P.split_command("key A=B C") == ("key", "A=B C")
    assert P.decode_command_line(b"open\r") == "open"
    assert P.decode_command_line(b"\xff\xfe") is None
    assert P.decode_command_line(b"op\x00en") is None
    assert P.async_message("FILE", "/x.fits COMPLETE") == b"FILE:/x.fits COMPLETE"
    assert P.native_async_lines("STATUS", "A=1 B=2") == [
        "STATUS:BEGIN",
        "STATUS:A=1",
        "STATUS:B=2",
        "STATUS:END",
    ]


def test_user_keys():
    k = P.parse_user_key("observer=Hale//who")
    assert (k.keyword, k.value, k.comment) == ("OBSERVER", "Hale", "who")
    assert P.parse_user_key("LONGKEYWORD=5").keyword == "LONGKEYW"
    assert P.parse_user_key("A=5").value == 5
    assert P.parse_user_key("A=-2.5e3").value == -2500.0
    assert P.parse_user_key("A=T").value is True
    assert P.parse_user_key("A=.").value is None
    for bad in ("novalue", "=5", "A=", "A B=1", "A=\x01"):
        with pytest.raises(ValueError):
            P.parse_user_key(bad)


@given(st.text(max_size=80))
def test_user_key_parser_total(text):
    try:
        k = P.parse_user_key(text)
    except ValueError:
        return
    assert 1 <= len(k.keyword) <= 8


def test_fits_names():
    assert P.fits_basename("image", "time", 3, "20240101120000") == "image_20240101120000.fits"
    assert P.fits_basename("image", "number", 3, "x") == "image_0003.fits"
    assert P.fits_basename("img", "number", 123456, "x") == "img_123456.fits"
    assert P.with_counter("image_0003.fits", 2) == "image_0003-2.fits"
    assert not P.valid_basename("a/b") and not P.valid_basename("") and P.valid_basename("a.b")

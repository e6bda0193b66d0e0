"""Pure cores of archonsrv: config, Archon framing, FETCH blocks, ACF geometry, replies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archonsrv import acf as ACF
from archonsrv import archon as A
from archonsrv import config as C
from archonsrv import protocol as P
from archonsrv.camera import fitsio
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


@pytest.mark.parametrize("short", ["x", "}", "ab", "A=", "=", "  ;;  # c", "\t\r"])
def test_config_short_lines_ignored_not_fatal(short, caplog):
    # the original skipped lines shorter than 3 characters: a stray character
    # (an editor slip, a CRLF remnant) must not stop camerad from starting
    cfg = C.parse(BASE_CFG + short + "\nIMDIR=/data\n", "cam.cfg")
    assert cfg.imdir == "/data" and cfg.blkport == 3031
    if short.split("#")[0].strip():
        assert "cam.cfg:4:" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize("bad", ["abc", "IMDIR /data", "LOGSTDERR"])
def test_config_line_without_equals_names_the_line(bad):
    with pytest.raises(ConfigError, match=r"cam\.cfg:4: expected KEY=VALUE"):
        C.parse(BASE_CFG + bad + "\n", "cam.cfg")


def test_config_file_with_short_line_loads(tmp_path):
    p = tmp_path / "cam.cfg"
    p.write_text(BASE_CFG + "x\r\n\r\nBASENAME=run\r\n")
    cfg = C.load(p)
    assert cfg.basename == "run"


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


def test_config_relative_paths_follow_the_config_file():
    # a daemon runs in /, so "relative to the working directory" would mean /images
    cfg = C.parse(BASE_CFG + "IMDIR=images\nLOGPATH=logs\n", "/etc/cam/camerad.cfg")
    assert (cfg.imdir, cfg.logpath) == ("/etc/cam/images", "/etc/cam/logs")
    assert cfg.resolve("other") == "/etc/cam/other" and cfg.resolve("/abs") == "/abs"
    with pytest.raises(ConfigError, match="IMDIR"):
        C.parse(BASE_CFG + "IMDIR=\n")


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
    wire = A.encode_command(ref, cmd)
    assert wire.startswith(b">%02X" % ref) and wire.endswith(b"\n")
    back = A.decode_command(wire[:-1])
    assert back == A.ArchonCommand(ref, cmd)


@given(ref=st.integers(0, 255), text=st.text(alphabet="ABC=0123 .", max_size=60))
def test_reply_roundtrip(ref, text):
    assert A.decode_reply(A.encode_reply(ref, text)[:-1]) == A.ArchonReply(ref, True, text)
    assert A.decode_reply(A.encode_error(ref)[:-1]) == A.ArchonReply(ref, False, "")


@given(
    line=st.integers(0, A.MAX_CONFIG_LINES - 1),
    key=st.from_regex(r"[A-Z][A-Z0-9_/]{0,20}", fullmatch=True),
    value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
def test_config_memory_commands_roundtrip(line, key, value):
    assert A.parse_wconfig(A.wconfig_command(line, key, value)) == (line, key, value)
    assert A.parse_rconfig(A.rconfig_command(line)) == line


def test_config_memory_commands_reject():
    with pytest.raises(A.ProtocolError):
        A.wconfig_command(0x10000, "A", "1")
    for bad in ("WCONFIG", "WCONFIG00", "WCONFIG00G0A=1", "WCONFIG0000=1", "WCONFIG0000A"):
        assert A.parse_wconfig(bad) is None, bad
    for bad in ("RCONFIG", "RCONFIG001", "RCONFIG00001", "RCONFIGzzzz"):
        assert A.parse_rconfig(bad) is None, bad
    assert A.param_entry("PARAMETER3", "Expose=0") == ("Expose", "0")
    assert A.param_entry("PARAMETERS", "Expose=0") is None  # the count line
    assert A.param_entry("PARAMETER3", "novalue") is None
    assert A.parse_param_reply("PARAMETER12=exptime=1500\r") == ("exptime", "1500")
    assert A.parse_param_reply("LINECOUNT=516") is None


def test_reply_garbage_and_commands():
    # bad input is a BadInput value (common.badinput), never an exception
    for bad in (b"", b"hello", b"<G1", b">01X"):
        assert isinstance(A.decode_reply(bad), A.BadInput), bad
    assert isinstance(A.decode_command(b"FRAME"), A.BadInput)
    assert isinstance(A.decode_command(b">zzFRAME"), A.BadInput)
    assert A.fetch_command(0xA0000000, 64) == "FETCHA000000000000040"
    assert A.parse_fetch("FETCHA000000000000040") == (0xA0000000, 64)
    assert A.parse_fetch("FETCH123") is None
    assert A.timer_text(255) == "00000000000000FF"


@settings(max_examples=80, deadline=None)
@given(
    ref=st.integers(0, 255),
    nbytes=st.integers(0, 5000),
    cuts=st.lists(st.integers(1, 3000), max_size=12),
)
def test_fetch_blocks_any_split(ref, nbytes, cuts):
    data = (np.arange(nbytes, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8).tobytes()
    blocks = A.blocks_for(nbytes)
    wire = A.encode_fetch_reply(ref, data, blocks)
    assert len(wire) == blocks * A.BLOCK_WIRE
    dec = A.FetchDecoder(ref, blocks)
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
    wire = bytearray(A.encode_fetch_reply(7, bytes(5000), 5))
    dec = A.FetchDecoder(7, 5)
    bad = wire[: 2 * A.BLOCK_WIRE] + b"?07\n"
    dec.writable()[: len(bad)] = bad
    with pytest.raises(A.ProtocolError, match="block 2"):
        dec.advance(len(bad))
    wire[3 * A.BLOCK_WIRE + 1] = ord("9")  # wrong reference in block 3
    dec = A.FetchDecoder(7, 5)
    dec.writable()[:] = wire
    with pytest.raises(A.ProtocolError, match="block 3"):
        dec.advance(len(wire))
    # data that merely looks like a header inside a block is not touched
    payload = b"<07:" * 256 * 2
    dec = A.FetchDecoder(7, 2)
    w = A.encode_fetch_reply(7, payload, 2)
    dec.writable()[:] = w
    dec.advance(len(w))
    assert dec.payload().tobytes() == payload


def test_frame_roundtrip_and_newest():
    fs = A.FrameStatus(timer=0x1234, rbuf=0, wbuf=2)
    fs.buffers = [
        A.BufferStatus(1, complete=1, frame=5, base=0xA0000000, width=256, height=256),
        A.BufferStatus(2, complete=0, frame=3, lines=100),
        A.BufferStatus(3, complete=1, frame=4),
    ]
    back = A.parse_frame(A.format_frame(fs))
    assert back.timer == 0x1234 and back.wbuf == 2
    assert back.newest().index == 1
    assert back.find_frame(4).index == 3 and back.find_frame(3) is None
    assert back.writing().lines == 100
    with pytest.raises(A.ProtocolError):
        A.parse_frame("TIMER=1 BUSY")


# -- ACF and geometry ----------------------------------------------------------


def test_demo_acf_geometry():
    acf = ACF.parse_acf(C.DEMO_ACF.read_text(), "demo.acf")
    assert set(acf.modes) >= {"DEFAULT", "HDR", "SPLIT", "FULL"}
    assert "Expose" in acf.params() and "exptime" in acf.params()
    vals = acf.values()
    assert vals["MOD4/LVLC_V1"] == "0"  # backslash became slash
    assert vals["TAPLINE0"] == "AD5L,1.0,1000"  # quotes removed
    g = ACF.compute_geometry(vals, acf.modes["DEFAULT"].arch)
    assert (g.width, g.height, g.bitpix, g.activebufs) == (256, 256, 16, 3)
    assert g.amp_sections == [
        (1, 64, 1, 256),
        (65, 128, 1, 256),
        (129, 192, 1, 256),
        (193, 256, 1, 256),
    ]
    assert g.image_bytes == 256 * 256 * 2 and g.blocks == 128
    split = dict(vals, FRAMEMODE="2", LINECOUNT="128")
    g = ACF.compute_geometry(split, acf.modes["SPLIT"].arch)
    assert (g.width, g.height) == (128, 256)
    assert g.amp_sections == [
        (1, 64, 1, 128),
        (65, 128, 1, 128),
        (1, 64, 129, 256),
        (65, 128, 129, 256),
    ]
    g = ACF.compute_geometry(dict(vals, SAMPLEMODE="1"), acf.modes["HDR"].arch)
    assert g.bitpix == 32 and g.image_bytes == 256 * 256 * 4
    g = ACF.compute_geometry(vals, acf.modes["DEFAULT"].arch, raw=True)
    assert (g.width, g.height, g.bitpix, g.raw) == (400, 64, 16, True)
    g = ACF.compute_geometry(
        dict(vals, PIXELCOUNT="1050", LINECOUNT="4200"),
        {"NUM_DETECT": "1", "HORI_AMPS": "4", "VERT_AMPS": "1"},
    )
    assert (g.width, g.height) == (4200, 4200) and g.image_bytes == 35280000
    assert ACF.tap_gains(vals) == {4: ("1.0", "1000"), 5: ("1.0", "1000")}


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
    with pytest.raises(ACF.AcfError, match=match):
        ACF.parse_acf(text)


def test_geometry_missing_key():
    acf = ACF.parse_acf(C.DEMO_ACF.read_text())
    vals = acf.values()
    del vals["TAPLINES"]
    with pytest.raises(ACF.AcfError, match="TAPLINES"):
        ACF.compute_geometry(vals, acf.modes["DEFAULT"].arch)


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
    for bad in ("novalue", "=5", "A=", "A B=1", "A=\x01", "A=1e999", "A=-1E400//c"):
        with pytest.raises(ValueError):
            P.parse_user_key(bad)


@given(st.text(max_size=80))
def test_user_key_parser_total(text):
    try:
        k = P.parse_user_key(text)
    except ValueError:
        return
    assert 1 <= len(k.keyword) <= 8
    if k.value is not None:  # an accepted key must not break the next FITS file
        fitsio._header([(k.keyword, k.value, k.comment)]).tostring()


@pytest.mark.parametrize("value", ["1e999", "-2.5e3", "99999999999999999999999", "x" * 68, "it's"])
def test_accepted_user_key_goes_into_a_header(value):
    try:
        k = P.parse_user_key(f"K={value}//" + "c" * 60)
    except ValueError:
        return
    fitsio._header([(k.keyword, k.value, k.comment)]).tostring()


def test_fits_names():
    assert P.fits_basename("image", "time", 3, "20240101120000") == "image_20240101120000.fits"
    assert P.fits_basename("image", "number", 3, "x") == "image_0003.fits"
    assert P.fits_basename("img", "number", 123456, "x") == "img_123456.fits"
    assert P.with_counter("image_0003.fits", 2) == "image_0003-2.fits"
    assert not P.valid_basename("a/b") and not P.valid_basename("") and P.valid_basename("a.b")

"""Pure parts of common/: config reader, line framing, allow-lists, parsers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import cli
from common.config import ConfigError, parse_bool, parse_keyvalue
from common.framing import LineBuffer, OverlongLine
from common.server import address_allowed, parse_allow


def test_config_example():
    cfg = parse_keyvalue(
        "# a comment line\n"
        "ARCHON_IP=10.0.0.2   # controller\n"
        'IMDIR="/data/my images # not a comment"\n'
        "DEFAULT_FIRMWARE=(0 /path/tim.lod)\n"
        "DEFAULT_FIRMWARE=(1 /path/two.lod)\n"
        "EMPTY=\n"
        "\n"
    )
    assert cfg.get("ARCHON_IP") == "10.0.0.2"
    assert cfg.get("IMDIR") == "/data/my images # not a comment"
    assert cfg.arrays["DEFAULT_FIRMWARE"] == {"0": "/path/tim.lod", "1": "/path/two.lod"}
    assert cfg.get("EMPTY") == ""
    assert [ln[0] for ln in cfg.lines] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value", "BAD KEY=1", "ARR=(0)", "ARR=(0 x"])
def test_config_errors_name_the_line(bad):
    with pytest.raises(ConfigError, match=r"cfg:2:"):
        parse_keyvalue("OK=1\n" + bad + "\n", "cfg")


def test_config_min_length_skips_short_lines():
    text = "OK=1\nx\nA=\nB=22\n"
    with pytest.raises(ConfigError, match=r"cfg:2:"):
        parse_keyvalue(text, "cfg")  # default: every line must be KEY=VALUE
    cfg = parse_keyvalue(text, "cfg", min_length=3)
    assert cfg.scalars == {"OK": "1", "B": "22"}
    assert cfg.skipped == [(2, "x"), (3, "A=")]
    with pytest.raises(ConfigError, match=r"cfg:2:"):
        parse_keyvalue("OK=1\nNOEQUALS\n", "cfg", min_length=3)


keys = st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True)
values = (
    st.text(
        alphabet=st.characters(
            blacklist_characters='#"\n\r', blacklist_categories=("Cs", "Zl", "Zp")
        ),
        max_size=30,
    )
    .map(str.strip)
    .filter(lambda v: not v.startswith("("))
)


@given(st.dictionaries(keys, values, max_size=10))
def test_config_round_trip(d):
    text = "".join(f"{k}={v}  # c\n" for k, v in d.items())
    cfg = parse_keyvalue(text)
    assert cfg.scalars == d


@given(st.text(max_size=200))
def test_config_garbage_gives_config_error_only(text):
    try:
        parse_keyvalue(text)
    except ConfigError:
        pass


def test_parse_bool():
    assert parse_bool("Yes") and parse_bool("true") and not parse_bool("no")
    with pytest.raises(ConfigError):
        parse_bool("maybe")


lines_st = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)


@given(lines_st, st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=50))
def test_line_buffer_any_split(lines, cuts):
    stream = b"".join(ln + b"\n" for ln in lines)
    buf = LineBuffer(max_line=1000, strip_cr=False)
    out = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out.extend(buf.feed(stream[pos : pos + n]))
        pos += n
        i += 1
    assert out == lines
    assert len(buf) == 0


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_line_buffer_is_bounded(data, chunk):
    buf = LineBuffer(max_line=100)
    for i in range(0, len(data), chunk):
        for item in buf.feed(data[i : i + chunk]):
            assert isinstance(item, OverlongLine) or len(item) <= 100
        assert len(buf) <= 100 + chunk


def test_line_buffer_overlong_then_resync():
    buf = LineBuffer(max_line=10)
    out = buf.feed(b"x" * 25)
    out += buf.feed(b"yy\nok\r\n")
    assert out == [OverlongLine(27), b"ok"]


def test_allow_list():
    allow = parse_allow(["10.0.0.0/8", "127.0.0.1", "::1"])
    assert address_allowed("10.1.2.3", allow)
    assert address_allowed("127.0.0.1", allow)
    assert not address_allowed("127.0.0.2", allow)
    assert address_allowed("::ffff:10.0.0.1", allow)
    assert address_allowed("anything", None)
    assert not address_allowed("not-an-ip", allow)


def test_single_dash_long_options_and_no_abbreviation():
    p = cli.make_parser("x", "test")
    p.add_argument("-dtb", "--base", action="store_true")
    p.add_argument("-d", "--data", action="store_true")
    p.add_argument("-port", dest="port")
    p.add_argument("-p", dest="pnum")
    a = cli.parse_or_exit(p, ["-dtb", "-port", "STAT", "-p", "4"])
    assert a.base and not a.data and a.port == "STAT" and a.pnum == "4"
    with pytest.raises(SystemExit) as e:
        cli.parse_or_exit(p, ["--bas"])
    assert e.value.code == 2

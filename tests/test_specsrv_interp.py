"""The spec-language interpreter and the motor/counter simulation, in process."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from specsrv.interp import Interp, SpecError, SpecSyntaxError, spec_sprintf
from specsrv.motors import Instrument, Profile, parse_config

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
motor tth name="Two Theta" steps=1000 low=-90 high=90 base=5000 slew=100000 accel=10 backlash=50
motor th steps=1000 sign=-1 offset=2 low=-90 high=90 base=5000 slew=100000 accel=10
motor sw steps=1000 low=-10 high=10 base=5000 slew=20000 accel=10 high_switch=0.2
counter sec type=timer
counter mon type=monitor rate=2000
counter det type=detector rate=1000
"""


@pytest.fixture
def env():
    events = []
    hw = Instrument(parse_config(CONFIG), lambda p, v, f=0: events.append((p, v)), update=0.01)
    hw.start()
    it = Interp(hw, name="fourc")
    yield it, events
    hw.stop()


def run(it, src):
    return it.run(src)


@pytest.mark.parametrize(
    "src,value,output",
    [
        ("2+2", 4.0, ""),
        ("p 1+1", None, "2\n"),
        ('print("Hello, world!")', None, "Hello, world!\n"),
        ("p 1/3", None, "0.333333333333333\n"),
        ('p "a" "b", 3 "x"', None, "ab 3x\n"),
        ("x = 3; x += 2; x", 5.0, ""),
        ("x = 3; x++; ++x; x--", 5.0, ""),
        ("0x10 | 1", 17.0, ""),
        ("7 % 3 + (1 << 4)", 17.0, ""),
        ("1 < 2 && 2 < 1 || !0", 1.0, ""),
        ('"abc" == "abc"', 1.0, ""),
        ('"10" == 10', 1.0, ""),
        ('3 > 2 ? "yes" : "no"', "yes", ""),
        ('length("hello")', 5.0, ""),
        ('substr("hello", 2, 3)', "ell", ""),
        ('index("hello", "ll")', 3.0, ""),
        ('n = split("a b c", parts); parts[1] n', "b3", ""),
        ('sprintf("%5.2f|%d|%s|%x|%03d", 3.14159, 7.9, "s", 255, 4)', " 3.14|7|s|ff|004", ""),
        ("for (i = 0; i < 3; i++) p i", None, "0\n1\n2\n"),
        ("i = 0; while (1) { if (++i > 4) break }; i", 5.0, ""),
        ("s = 0; for (i = 0; i < 5; i++) { if (i == 2) continue; s += i }; s", 8.0, ""),
        ("if (0) p 1; else p 2", None, "2\n"),
        ("if (0) {\n p 1\n}\nelse {\n p 2\n}", None, "2\n"),
        ('a["x"] = 1; a["y"] = 2; for (k in a) p k, a[k]', None, "x 1\ny 2\n"),
        ("m[1][2] = 5; m[1][2] * 2", 10.0, ""),
        ("double array d[4]; d[2] = 7; p d", None, "0 0 7 0\n"),
        ("long array g[2][3]; g[1][2] = 9; g[1][2] + g[0][0]", 9.0, ""),
        ("def f(a, b) '{ return a * b }'; f(6, 7)", 42.0, ""),
        ("def hi 'p \"hi\", $1, $#'; hi 5 6", None, "hi 5 2\n"),
        ("tth + th", 1.0, ""),
        ("motor_mne(1) motor_name(0)", "thTwo Theta", ""),
        ('cnt_num("det") + cnt_num("nope")', 1.0, ""),
        ("pow(2, 10) + sqrt(16) + int(-2.5)", 1026.0, ""),
        ('exists("nothing_here")', 0.0, ""),
        ("# a comment\n3 # another", 3.0, ""),
        ('x = 4; eval("x * 2")', 8.0, ""),
    ],
)
def test_commands(env, src, value, output):
    it, _ = env
    assert run(it, src) == (value, output)


@pytest.mark.parametrize(
    "src,err,text",
    [
        ("1 +", 2, "syntax error"),
        ("p (", 2, "syntax error"),
        ("{ p 1", 2, "missing '}'"),
        ("p 1/0", 1, "Divide by zero"),
        ("nosuchfunc(1)", 1, "not found"),
        ("mv tth 500", 1, "high limit"),
        ("mv nosuch 1", 1, "Invalid motor"),
        ("tth = 5", 1, "Can't assign"),
        ("exit", 3, "exit"),
        ("sqrt(-1)", 1, "out of range"),
        ("double array e[3]; e[5] = 1", 1, "out of range"),
        ('motor_par(tth, "bogus")', 1, "unknown parameter"),
        ("def r 'r'; r", 1, "recursion"),
    ],
)
def test_errors(env, src, err, text):
    it, _ = env
    with pytest.raises(SpecError) as e:
        run(it, src)
    assert e.value.err == err and text in str(e.value)


def test_moves_getangles_and_backlash(env):
    it, events = env
    run(it, "{get_angles;A[tth]=1;move_em;}")
    run(it, "waitmove; getangles")
    assert run(it, "A[tth]")[0] == 1.0
    events.clear()
    run(it, "umv tth -1")
    pos = [v for p, v in events if p == "motor/tth/position"]
    assert min(pos) == pytest.approx(-1.05)  # 50 steps of backlash past the target
    assert pos[-1] == -1.0
    assert [v for p, v in events if p == "motor/tth/move_done"] == [1, 0]
    # th: sign -1, offset 2 -> user = -dial + 2
    run(it, "umv th 1")
    assert it.hw.by_mne["th"].dial == pytest.approx(1.0)
    assert run(it, "mvr th 0.5; waitmove; getangles; A[th]")[0] == pytest.approx(1.5)


def test_set_set_dial_set_lm(env):
    it, _ = env
    run(it, "set tth 10")
    m = it.hw.by_mne["tth"]
    assert (m.user, m.dial, m.offset) == (10.0, 0.0, 10.0)
    run(it, "set_dial tth 1")
    assert (m.dial, m.user) == (1.0, 11.0)
    run(it, "set_lm tth 0 20")
    assert (m.low, m.high) == (-10.0, 10.0)
    with pytest.raises(SpecError):
        run(it, "mv tth 25")
    out = run(it, "wm tth")[1]
    assert "User" in out and "20.0000" in out
    assert "Two Theta" in run(it, "wa")[1]


def test_limit_switch_mode_1_and_mode_2(env):
    it, events = env
    run(it, "umv sw 1")
    m = it.hw.by_mne["sw"]
    assert m.dial == 0.2 and m.high_hit == 1
    assert ("motor/sw/high_lim_hit", 1) in events
    # mode 2: the hit aborts the other motors and the command
    run(it, "umv sw 0")
    it.hw.mode = 2
    it.hw.on_limit_abort = lambda: it.abort("sw hit a limit")
    with pytest.raises(SpecError) as e:
        run(it, "mv tth 80 sw 1; waitmove")
    assert "limit" in str(e.value)
    assert not it.hw.by_mne["tth"].moving and it.hw.by_mne["tth"].dial < 80


def test_counting_to_time_and_monitor(env):
    it, events = env
    out = run(it, "ct 0.2")[1]
    assert "det" in out.lower() or "Detector" in out
    assert run(it, "S[det]")[0] == 200.0 and run(it, "S[sec]")[0] == 0.2
    run(it, "count_em -500; waitcount; getcounts")
    assert run(it, "S[mon]")[0] == 500.0 and run(it, "S[det]")[0] == 250.0
    counts = [v for p, v in events if p == "scaler/.all./count"]
    assert counts == [1, 0, 1, 0]


def test_abort_stops_loops_sleep_and_motion(env):
    it, _ = env
    for src in ("while (1) {}", "for (;;) x++", "sleep(30)", "mv tth 80; waitmove"):
        t = threading.Timer(0.2, it.abort)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(SpecError, match="Aborted"):
            run(it, src)
        assert time.monotonic() - t0 < 10
        t.join()
    assert not it.hw.any_moving()


def test_search_and_chg_dial(env):
    it, _ = env
    run(it, 'chg_dial(tth, "home", 5)')
    assert it.hw.by_mne["tth"].dial == 5.0
    run(it, 'chg_dial(sw, "lim+")')
    assert it.hw.by_mne["sw"].dial == 0.2
    with pytest.raises(SpecError):
        run(it, 'chg_dial(sw, "sideways")')


def test_var_hooks(env):
    it, _ = env
    seen = []
    it.on_var = lambda name, key, deleted: seen.append((name, key, deleted))
    run(it, 'T = 1; arr["k"] = 2; delete arr["k"]; unglobal T')
    assert seen == [("T", None, False), ("arr", "k", False), ("arr", "k", True), ("T", None, True)]
    seen.clear()
    run(it, "local q; q = 5; { local r; r = 1 }")
    assert seen == []
    # built-in code updating A[] and S[] sends no events; explicit assignment does
    run(it, "getangles; ct 0.05; getcounts")
    assert seen == []
    run(it, "A[tth] = A[tth]")
    assert seen == [("A", "0", False)]
    with pytest.raises(SpecError):
        it.set_global("A", {"99": 1})  # built-in arrays: only existing elements


def test_sprintf_conversions():
    assert spec_sprintf("%s=%g %e %%", ["x", 0.5, 1.0]) == "x=0.5 1.000000e+00 %"
    assert spec_sprintf("%c%c", [65, "bc"]) == "Ab"
    assert spec_sprintf("%d %d", [1]) == "1 0"


@settings(max_examples=80, deadline=None)
@given(
    st.recursive(
        st.integers(-50, 50).map(str),
        lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        max_leaves=12,
    )
)
def test_integer_arithmetic_matches_python(expr):
    hw = Instrument(parse_config(""), lambda *a: None)
    it = Interp(hw)
    assert it.run(expr)[0] == float(eval(expr))  # integers and + - * only


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab1 +-*/(){}[];\"'=<>!&|#$\n\\.,?:%^~", max_size=40))
def test_random_source_gives_spec_errors_only(src):
    hw = Instrument(parse_config(""), lambda *a: None)
    it = Interp(hw)
    t = threading.Timer(1.0, it.abort)
    t.start()
    try:
        it.run(src)
    except SpecError:
        pass
    finally:
        t.cancel()


def test_profile_is_trapezoidal_and_exact_at_the_end():
    p = Profile(0.0, 10.0, 1.0, 20.0, 0.1)
    assert p.at(0) == 0 and p.at(p.total) == 10.0
    samples = [p.at(i * p.total / 50) for i in range(51)]
    assert samples == sorted(samples)
    short = Profile(0.0, 0.01, 1.0, 20.0, 0.1)  # never reaches slew speed
    assert short.vp < 20.0 and short.at(short.total) == 0.01


@pytest.mark.parametrize(
    "text,msg",
    [
        ("gizmo x\n", "expected 'motor' or 'counter'"),
        ("motor\n", "needs a mnemonic"),
        ("motor a\nmotor a\n", "used twice"),
        ("motor a steps=0\n", "non-zero"),
        ("motor a sign=2\n", "sign"),
        ("motor a low=5 high=1\n", "low limit above"),
        ("motor a colour=red\n", "unknown motor key"),
        ("counter c type=laser\n", "counter type"),
        ('motor a name="unterminated\n', "No closing quotation"),
        ("motor a low=nan\n", "bad value for low"),
        ("counter c rate=-5\n", "counter rate"),
        ("counter c rate=inf\n", "counter rate"),
    ],
)
def test_config_errors(text, msg):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.conf")
    assert msg in str(e.value) and "x.conf:" in str(e.value)


def test_syntax_error_class():
    hw = Instrument(parse_config(""), lambda *a: None)
    with pytest.raises(SpecSyntaxError):
        Interp(hw).run("if (")


def test_emergency_stop_and_motor_fault(env):
    it, events = env
    run(it, "mv tth 60")
    run(it, 'sim_fault(tth, "emergency_stop", 1)')
    m = it.hw.by_mne["tth"]
    assert not m.moving and m.dial < 60
    assert ("motor/tth/emergency_stop", 1) in events
    with pytest.raises(SpecError, match="emergency stop"):
        run(it, "mv tth 1")
    run(it, 'sim_fault(tth, "emergency_stop", 0); sim_fault(th, "motor_fault")')
    run(it, "umv tth 1")
    assert m.dial == 1.0
    with pytest.raises(SpecError, match="motor fault"):
        run(it, "mv th 1")


def test_strings_are_bounded(env):
    it, _ = env
    with pytest.raises(SpecError, match="String longer"):
        run(it, 's = "xxxxxxxxxxxxxxxx"; while (1) s = s s')


@pytest.mark.parametrize("src", ["-" * 5000 + "1", "(" * 5000 + "1" + ")" * 5000, "{" * 3000])
def test_deep_nesting_is_an_error_not_a_crash(env, src):
    it, _ = env
    with pytest.raises(SpecError):
        run(it, src)
    assert run(it, "1+1")[0] == 2.0


def test_a_data_directory_of_root_allows_no_file(env, tmp_path):
    """A service started in / without --data-dir: no client may write any file."""
    it, _ = env
    it.data_dir = "/"
    for name in ("/tmp/x.dat", "home/specadm/.profile", "x.dat"):
        with pytest.raises(SpecError, match="no data directory"):
            it.file_path(name)
    it.data_dir = str(tmp_path)
    assert it.file_path("x.dat") == str(tmp_path / "x.dat")

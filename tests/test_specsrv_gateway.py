"""Gateway mode and packet recording (issue 14 item 8): specsrv fronts motors
of another spec server through the client side of the protocol; --record
writes every packet of both sides."""

from __future__ import annotations

import json

import pytest

from tests.support import procs
from tests.test_specsrv_spec import start
from tests.test_specsrv_wire import ABORT, CMD, ERROR, EVENT, REGISTER, Raw, text

pytestmark = pytest.mark.timeout(120)

REMOTE = """\
motor tth name="Two Theta" steps=1000 low=-20 high=20 base=2000 slew=5000 accel=20
motor th steps=1000 low=-50 high=50 base=20000 slew=400000 accel=5
counter sec type=timer
counter det type=detector rate=500
"""


def local_config(port: int) -> str:
    return (
        f"motor tth remote=127.0.0.1:{port}\n"
        f"motor theta remote=127.0.0.1:{port} remote_mne=th\n"
        "motor loc steps=1000 low=-5 high=5 base=20000 slew=400000 accel=5\n"
        "counter sec type=timer\n"
        f"counter rdet remote=127.0.0.1:{port} remote_mne=det\n"
    )


@pytest.fixture
def pair(tmp_path):
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    a, a_port, _ = start(a_dir, name="real", config=REMOTE)
    record = tmp_path / "packets.jsonl"
    b = None
    try:
        b, b_port, b_log = start(
            b_dir, "--record", str(record), name="front", config=local_config(a_port)
        )
        yield a_port, b_port, record
    finally:
        if b is not None:
            procs.stop(b)
        procs.stop(a)


def test_remote_motors_move_and_report_through_the_gateway(pair):
    a_port, b_port, record = pair
    real = Raw(a_port)
    front = Raw(b_port)
    assert text(front.read("motor/tth/high_limit")) == "20"  # the remote's limits
    front.send(REGISTER, name="motor/tth/move_done")
    assert text(front.expect(EVENT, "motor/tth/move_done")) == "0"
    r, seen = front.eval_events("umv tth 3")
    assert r["err"] == 0, r["data"]
    assert text(real.read("motor/tth/position")) == "3"  # the real server moved
    assert text(front.read("motor/tth/position")) == "3"
    done = [text(h) for h in seen if h["cmd"] == EVENT and h["name"] == "motor/tth/move_done"]
    assert done == ["1", "0"]  # as a local motor: started, then done before the reply
    # another mnemonic on the remote, and a local motor beside them
    assert front.eval("umv theta -2 loc 1", timeout=30)["err"] == 0
    assert text(real.read("motor/th/position")) == "-2"
    assert text(real.read("motor/tth/position")) == "3"
    assert text(front.read("motor/loc/position")) == "1"
    # set (offset), set_lm (limits) go to the remote
    assert front.eval("set tth 10", sn=20)["err"] == 0
    assert procs.wait_until(lambda: text(real.read("motor/tth/position")) == "10", 5)
    assert procs.wait_until(lambda: text(front.read("motor/tth/offset")) == "7", 5)
    assert front.eval("set_lm theta -4 4", sn=21)["err"] == 0
    assert procs.wait_until(lambda: text(real.read("motor/th/high_limit")) == "4", 5)
    # a move past the remote's limits is refused before anything moves
    r = front.eval("mv tth 100", sn=22)
    assert r["type"] == ERROR and "limit" in text(r)
    real.close()
    front.close()


def test_abort_stops_the_remote_motor(pair):
    a_port, b_port, _ = pair
    real = Raw(a_port)
    front = Raw(b_port)
    front.send(CMD, data=b"umv tth 19\0")  # slow: 19 degrees at 5 deg/s
    assert procs.wait_until(lambda: float(text(real.read("motor/tth/position"))) > 0.5, 10)
    front.send(ABORT)
    assert procs.wait_until(lambda: text(real.read("motor/tth/move_done")) == "0", 10)
    pos = float(text(real.read("motor/tth/position")))
    assert 0 < pos < 19
    assert procs.wait_until(lambda: text(front.read("motor/tth/move_done")) == "0", 10)
    assert abs(float(text(front.read("motor/tth/position"))) - pos) < 1e-9
    assert text(front.eval("1+1", sn=5)) == "2"
    real.close()
    front.close()


def test_packet_record_has_both_sides(pair):
    a_port, b_port, record = pair
    front = Raw(b_port)
    front.read("motor/tth/position", sn=4321)
    front.close()
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    sides = {(x["side"], x["dir"]) for x in lines}
    assert {("server", "R"), ("server", "W"), ("gateway", "R"), ("gateway", "W")} <= sides
    mine = [x for x in lines if x["side"] == "server" and x["sn"] == 4321]
    assert [(x["dir"], x["cmd"], x["name"]) for x in mine] == [
        ("R", "CHAN_READ", "motor/tth/position"),
        ("W", "REPLY", "motor/tth/position"),
    ]
    assert bytes.fromhex(mine[1]["data"]).rstrip(b"\0") == b"0"
    hello = [x for x in lines if x["side"] == "gateway" and x["cmd"] == "HELLO_REPLY"]
    assert hello and hello[0]["name"] == "real"


def test_unreachable_remote_leaves_its_motors_unusable(tmp_path):
    port = procs.free_port()  # nothing listens there
    proc, b_port, _ = start(tmp_path, config=local_config(port))
    try:
        front = Raw(b_port)
        assert text(front.read("motor/tth/unusable")) == "1"
        r = front.eval("mv tth 1")
        assert r["type"] == ERROR and "unusable" in text(r)
        assert front.eval("umv loc 1", sn=3, timeout=30)["err"] == 0  # the rest works
        # the remote comes up: its motors become usable
        cfg = tmp_path / "real.conf"
        cfg.write_text(REMOTE)
        real = procs.start(
            "specsrv.cli", "-S", str(port), "-H", "127.0.0.1", "-N", "real", "-c", str(cfg)
        )
        try:
            procs.wait_port(port, proc=real)
            assert procs.wait_until(lambda: text(front.read("motor/tth/unusable")) == "0", 15)
            assert front.eval("umv tth 1", sn=4, timeout=30)["err"] == 0
        finally:
            procs.stop(real)
        front.close()
    finally:
        procs.stop(proc)


def test_remote_counter_counts_on_the_remote(pair):
    a_port, b_port, _ = pair
    real = Raw(a_port)
    front = Raw(b_port)
    real.send(REGISTER, name="scaler/.all./count")
    assert text(real.expect(EVENT, "scaler/.all./count")) == "0"
    out = front.eval("ct 0.4", timeout=30)
    assert out["err"] == 0, out["data"]
    # the remote counted (its count went 1 then 0) and its value came back
    flips = real.events({"scaler/.all./count"}, lambda ev: text(ev[-1]) == "0", timeout=10)
    assert [text(e) for e in flips][-2:] == ["1", "0"]
    remote_value = text(real.read("scaler/det/value"))
    assert remote_value == "200"  # 500/s for 0.4 s
    assert text(front.read("scaler/rdet/value")) == remote_value
    assert text(front.eval("S[rdet]", sn=12)) == remote_value
    assert text(front.read("scaler/sec/value")) == "0.4"  # the local timer beside it
    real.close()
    front.close()

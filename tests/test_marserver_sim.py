"""marsim on its own, and the dtb variant through marserver."""

from __future__ import annotations

import struct
import time

import pytest

from marserver import protocol as P
from tests.support import procs
from tests.support.marserver_rig import (
    Relay,
    connect,
    counters,
    is_closed,
    recv_exact,
    recv_for,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


def start_sim(spawn, *args: str) -> int:
    base = procs.free_port_block(4)
    p = spawn("marserver.sim", "-p", str(base), *args)
    procs.wait_port(base + 3, proc=p)
    return base


def test_new_client_kicks_the_previous_one_and_the_counter_keeps_rising(spawn):
    base = start_sim(spawn, "-r", "100")
    first = connect(base + 1)
    a = counters(P.MAR345, recv_exact(first, 404 * 5))
    second = connect(base + 1)
    assert is_closed(first)
    b = counters(P.MAR345, recv_exact(second, 404 * 5))
    assert a == list(range(a[0], a[0] + 5)) and b == list(range(b[0], b[0] + 5))
    assert b[0] > a[-1]
    second.close()


def test_status_words_and_sim_time_are_plausible(spawn):
    base = start_sim(spawn, "-r", "50")
    s = connect(base + 1)
    st = P.decode_status(P.MAR345, recv_exact(s, 404))
    assert st.word(P.W_HW_STATUS1) & P.HW1_SHUTTER_CLOSED
    assert st.word(P.W_SCANMODE) == 1
    w = P.MAR345.sim_time_word
    assert P.unpack_time(st.word(w), st.word(w + 1)) > 0
    s.close()


def test_shutter_and_task_words_follow_commands(spawn):
    base = start_sim(spawn, "-r", "100")
    c, s = connect(base), connect(base + 1)
    c.sendall(P.encode_command(P.MAR345, P.Command(P.Cmd.SHUTTER, 1)))
    c.sendall(P.encode_command(P.MAR345, P.Command(P.Cmd.CHANGE, 3)))

    def latest() -> P.Status:
        data = recv_for(s, 0.1)
        recs = [r for r in P.split_records(data[: len(data) - len(data) % 404], 404)]
        return P.decode_status(P.MAR345, recs[-1]) if recs else P.new_status(P.MAR345)

    recv_exact(s, 404)  # align: the simulator's stream starts at a record boundary
    assert wait_for(
        lambda: (
            (st := latest()).word(P.W_SCANMODE) == 3
            and not st.word(P.W_HW_STATUS1) & P.HW1_SHUTTER_CLOSED
            and st.word(P.W_TASK + P.Cmd.CHANGE) == P.TASK_DONE
        ),
        10,
    )
    c.close()
    s.close()


def test_swapped_simulator_sends_little_endian(spawn):
    base = start_sim(spawn, "-s", "-r", "100")
    s = connect(base + 1)
    raw = recv_exact(s, 404 * 3)
    cs = [struct.unpack_from("<i", r, 4 + 4 * 61)[0] for r in P.split_records(raw, 404)]
    assert cs == list(range(cs[0], cs[0] + 3))
    s.close()


def test_dtb_through_marserver(spawn, tmp_path):
    base = start_sim(spawn, "-dtb", "-r", "100", "--scan-blocks", "50")
    relay = Relay(spawn, base, hardware="-dtb", log=tmp_path / "log")
    relay.wait_listening(P.Port.MESS)
    assert relay.wait_log("dtb hardware at 127.0.0.1: connected")
    stat = connect(relay.port(P.Port.STAT))
    cs = counters(P.DTB, recv_exact(stat, 560 * 5))
    assert cs == list(range(cs[0], cs[0] + 5))
    mess = connect(relay.port(P.Port.MESS))
    data = connect(relay.port(P.Port.DATA))
    c = connect(relay.port(P.Port.COMM))
    scan = P.encode_command(P.DTB, P.Command(P.Cmd.SCAN, 0, (1, 2, 3, 4, 5, 6, 7, 8), b"align"))
    assert len(scan) == 172
    for _ in range(20):  # until the message client is registered
        c.sendall(scan)
        got = recv_for(mess, 0.25)
        if got:
            break
    assert P.decode_message(got[:84]) == "MESS command 10 mode 0 received"
    samples = recv_exact(data, 16 * 10)
    for i in range(0, len(samples), 16):  # whole samples, in step: (n, adc(n), -n, adc2(n))
        n, adc1, pos2, adc2 = struct.unpack_from(">4i", samples, i)
        assert (adc1, pos2, adc2) == (1000 + n % 97, -n, 2000 - n % 89)
    assert relay.wait_log("COMMAND from 127.0.0.1:")
    assert "cmd=10 mode=0 par=[1 2 3 4 5 6 7 8] str='align'" in relay.text()
    for s in (stat, mess, data, c):
        s.close()


def test_scan_sends_numbered_blocks_then_the_end_message(spawn):
    base = start_sim(spawn, "-r", "50", "--scan-blocks", "8")
    c, d, m = connect(base), connect(base + 2), connect(base + 3)
    time.sleep(0.3)  # let the simulator's handler threads attach the three sockets
    c.sendall(P.encode_command(P.MAR345, P.Command(P.Cmd.SCAN, 1)))
    blocks = P.split_records(recv_exact(d, 8 * 16386), 16386)
    assert [P.data_block_number(b) for b in blocks] == list(range(1, 9))
    texts: list[str] = []
    for _ in range(40):  # bounded: the end message follows within a few status ticks
        texts += [P.decode_message(r) for r in P.split_records(recv_exact(m, 84), 84)]
        if any("Ended" in t for t in texts):
            break
    assert texts[0].startswith("MESS SCAN_DATA    Started")
    assert "MESS SCAN_DATA    Ended o.k." in texts
    for s in (c, d, m):
        s.close()

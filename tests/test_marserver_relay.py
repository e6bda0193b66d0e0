"""marserver end to end: marsim (or a scripted fake hardware) -> marserver -> clients."""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time

import pytest

from marserver import protocol as P
from tests.support import procs
from tests.support.marserver_rig import (
    FakeHardware,
    Relay,
    connect,
    counters,
    is_closed,
    recv_exact,
    recv_for,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

HW = P.MAR345
STAT, COMM, DATA, MESS = P.Port.STAT, P.Port.COMM, P.Port.DATA, P.Port.MESS


@pytest.fixture
def marsim(spawn):
    def start(*args: str, base: int | None = None):
        base = base or procs.free_port_block(4)
        proc = spawn("marserver.sim", "-p", str(base), *args)
        procs.wait_port(base + 3, proc=proc)
        return base, proc

    return start


@pytest.fixture
def fakehw():
    hw = FakeHardware()
    yield hw
    hw.close()


def cmd(c: int, mode: int = 0, *pars: int, text: bytes = b"") -> bytes:
    return P.encode_command(HW, P.Command(c, mode, pars, text))


def threads(pid: int) -> int:
    """Number of threads of a process (Linux /proc)."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def ask_until(send_sock, record: bytes, read_sock, size: int, pred, tries: int = 40):
    """Send ``record`` until a reply record satisfying ``pred`` arrives (bounded)."""
    for _ in range(tries):
        send_sock.sendall(record)
        data = recv_for(read_sock, 0.25)
        for rec in P.split_records(data[: len(data) - len(data) % size], size):
            if pred(rec):
                return rec
    raise AssertionError("no reply")


def test_status_fanout_is_byte_exact_and_joins_at_record_boundaries(marsim, spawn, tmp_path):
    base, _ = marsim("-r", "200")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening()
    clients = [connect(relay.port(STAT)) for _ in range(3)]
    time.sleep(0.3)
    late = connect(relay.port(STAT))
    data = [recv_for(c, 1.0) for c in clients + [late]]
    seqs = []
    by_counter: dict[int, bytes] = {}
    for d in data:
        assert len(d) >= 404 * 20 and len(d) % 404 == 0
        cs = counters(HW, d)
        # every client, the late one too, is in step: one record per counter, no gap
        assert cs == list(range(cs[0], cs[0] + len(cs)))
        for c, rec in zip(cs, P.split_records(d, 404), strict=True):
            assert by_counter.setdefault(c, rec) == rec  # byte-exact across clients
        seqs.append(cs)
    assert seqs[3][0] > seqs[0][0]
    assert set(seqs[3]) & set(seqs[0])
    for c in clients + [late]:
        c.close()


def test_commands_messages_data_and_motors_through_marsim(marsim, spawn, tmp_path):
    base, _ = marsim("-r", "50", "--scan-blocks", "20")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening(MESS)
    mess = [connect(relay.port(MESS)) for _ in range(2)]
    data = [connect(relay.port(DATA)) for _ in range(2)]
    stat = connect(relay.port(STAT))
    c = connect(relay.port(COMM))
    assert relay.wait_registered(*mess, *data, stat)
    rec = ask_until(c, cmd(P.Cmd.SET, 0, 97), mess[0], 84, lambda r: P.parse_setparam(r))
    assert P.parse_setparam(rec) == (97, 3020)
    assert recv_for(stat, 0.5)  # status is flowing to this client too
    # both message clients see the same SETPARAM reply bytes
    assert rec in recv_for(mess[1], 1.0)
    c.sendall(cmd(P.Cmd.SCAN, 1))
    blocks = [recv_exact(d, 20 * 16386) for d in data]
    assert blocks[0] == blocks[1]
    assert [P.data_block_number(b) for b in P.split_records(blocks[0], 16386)] == list(range(1, 21))
    assert relay.wait_log("COMMAND from 127.0.0.1:")
    assert "SCAN mode=1" in relay.text() and "SET mode=0(READ) param=97" in relay.text()
    # MOVE omega to 1200: the actual position in STATUS converges to the target
    c.sendall(cmd(P.Cmd.MOVE, P.Axis.OMEGA, P.MoveKind.ABS, 1200, 500))
    wa, wt, _ = P.stepper_words(P.Axis.OMEGA)

    def omega_arrived() -> bool:
        d = recv_for(stat, 0.2)
        d = d[: len(d) - len(d) % 404]
        recs = [P.decode_status(HW, r) for r in P.split_records(d, 404)]
        return any(s.word(wa) == 1200 and s.word(wt) == 1200 for s in recs)

    # the status stream may be mid-record after the earlier partial read: resync once
    stat.close()
    stat = connect(relay.port(STAT))
    assert wait_for(omega_arrived, 10)
    for s in mess + data + [stat, c]:
        s.close()


def test_commands_from_two_clients_never_interleave(fakehw, spawn, tmp_path):
    relay = Relay(spawn, fakehw.base, log=tmp_path / "log")
    relay.wait_listening(COMM)
    assert wait_for(fakehw.connected)
    a, b = connect(relay.port(COMM)), connect(relay.port(COMM))
    recs = {
        "a": [cmd(P.Cmd.SET, 1, 100 + i, i) for i in range(60)],
        "b": [cmd(P.Cmd.MOVE, 2, 0, -i, 7) for i in range(60)],
    }

    def dribble(sock, records, seed):
        rnd = random.Random(seed)
        wire = b"".join(records)
        pos = 0
        while pos < len(wire):
            n = rnd.randint(1, 45)
            sock.sendall(wire[pos : pos + n])
            pos += n
            if rnd.random() < 0.3:
                time.sleep(0.001)

    ts = [
        threading.Thread(target=dribble, args=(a, recs["a"], 1)),
        threading.Thread(target=dribble, args=(b, recs["b"], 2)),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert wait_for(lambda: len(fakehw.commands) >= 120 * 60)
    got = P.split_records(bytes(fakehw.commands), 60)
    assert len(got) == 120
    assert [r for r in got if r in recs["a"]] == recs["a"]
    assert [r for r in got if r in recs["b"]] == recs["b"]
    a.close()
    b.close()


def test_garbage_and_partial_commands_are_dropped_with_a_log_line(fakehw, spawn, tmp_path):
    relay = Relay(spawn, fakehw.base, log=tmp_path / "log")
    relay.wait_listening(COMM)
    assert wait_for(fakehw.connected)
    good = cmd(P.Cmd.SHUTTER, 1)
    g = connect(relay.port(COMM))
    g.sendall(b"hello marserver, this is not a command record at all\n" * 20 + good)
    partial = connect(relay.port(COMM))
    partial.sendall(good[:33])
    partial.close()
    assert wait_for(lambda: len(fakehw.commands) >= 60)
    assert relay.wait_log("left 33 bytes of an incomplete command; discarded")
    time.sleep(0.3)
    assert bytes(fakehw.commands) == good
    assert "rejected (unknown command code" in relay.text()
    g.close()
    assert relay.wait_log("bytes of garbage rejected")


def test_slow_client_is_dropped_others_keep_everything(marsim, spawn, tmp_path):
    # a long scan at a high but finite rate (~30 MB/s): a client that reads
    # keeps up, one that never reads falls behind; marserver does not slow
    # the hardware down for either of them
    base, _ = marsim("--scan-rate", "2000", "--scan-blocks", "60000")
    relay = Relay(spawn, base, "--queue", "2000000", log=tmp_path / "log")
    relay.wait_listening(DATA)
    stalled = connect(relay.port(DATA), rcvbuf=4096)
    fast = connect(relay.port(DATA))
    assert relay.wait_registered(stalled, fast)
    c = connect(relay.port(COMM))
    c.sendall(cmd(P.Cmd.SCAN, 1))
    got = bytearray()
    deadline = time.monotonic() + 30
    while "disconnecting slow client" not in relay.text() and time.monotonic() < deadline:
        got += recv_for(fast, 0.2)
    assert "disconnecting slow client" in relay.text()
    # it is the stalled client that was dropped, and only that one
    assert f"disconnecting slow client 127.0.0.1:{stalled.getsockname()[1]}:" in relay.text()
    assert relay.text().count("disconnecting slow client") == 1
    got += recv_for(fast, 0.5)
    n = len(got) - len(got) % 16386
    nums = [P.data_block_number(r) for r in P.split_records(bytes(got[:n]), 16386)]
    assert len(nums) > 200
    # the fast client lost nothing: block numbers rise by one (mod 2**16)
    assert all((b - a) % 65536 == 1 for a, b in zip(nums, nums[1:], strict=False))
    assert is_closed(stalled)
    assert not is_closed(fast, 0.3)
    assert relay.text().count("disconnecting slow client") == 1
    fast.close()
    c.close()


def test_hardware_restart_keeps_clients_and_drops_commands_meanwhile(marsim, spawn, tmp_path):
    base, sim = marsim("-r", "100")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening()
    stat = connect(relay.port(STAT))
    c = connect(relay.port(COMM))
    assert len(recv_for(stat, 0.5)) > 404
    procs.stop(sim)
    assert relay.wait_log("lost after")
    assert "all hardware sockets closed, clients kept" in relay.text()
    c.sendall(cmd(P.Cmd.SHUTTER, 1))
    assert relay.wait_log("hardware not connected, command from")
    recv_for(stat, 0.3)
    spawn("marserver.sim", "-p", str(base), "-r", "100")
    assert relay.wait_log("connected (COMMAND", count=2, timeout=20)
    again = recv_exact(stat, 404 * 5, timeout=10)
    cs = counters(HW, again)
    assert cs == list(range(cs[0], cs[0] + 5))
    assert relay.proc.poll() is None
    c.sendall(cmd(P.Cmd.SET, 0, 95))
    assert relay.wait_log("SET mode=0(READ) param=95")
    stat.close()
    c.close()


def test_hardware_dying_mid_record_loses_no_whole_record(fakehw, spawn, tmp_path):
    relay = Relay(spawn, fakehw.base, log=tmp_path / "log")
    relay.wait_listening()
    assert wait_for(fakehw.connected)
    stat = connect(relay.port(STAT))
    assert relay.wait_log(f"STATUS: client 127.0.0.1:{stat.getsockname()[1]} connected")

    def status(n: int) -> bytes:
        s = P.new_status(HW)
        s.set(P.W_COUNTER, n)
        return P.encode_status(HW, s)

    fakehw.send(STAT, status(1) + status(2)[:200])
    assert counters(HW, recv_exact(stat, 404)) == [1]
    fakehw.drop_all()
    assert relay.wait_log("discarded 200 bytes of an incomplete 404-byte record")
    assert wait_for(lambda: fakehw.connected(generation=2), 10)
    fakehw.send(STAT, status(3) + status(4))
    assert counters(HW, recv_exact(stat, 808)) == [3, 4]
    stat.close()


def test_eleventh_client_is_closed_at_once(marsim, spawn, tmp_path):
    base, _ = marsim("-r", "20")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening(MESS)
    assert relay.wait_log("connected (COMMAND")
    ten = [connect(relay.port(MESS)) for _ in range(10)]
    assert relay.wait_registered(*ten)
    eleventh = connect(relay.port(MESS))
    assert is_closed(eleventh, 5)
    assert relay.wait_log("(already 10 clients, the limit)")
    ten.pop().close()
    assert relay.wait_log("9 clients left")
    again = connect(relay.port(MESS))
    assert not is_closed(again, 0.5)
    for s in ten + [again]:
        s.close()


def test_connect_disconnect_cycles_leak_nothing(marsim, spawn, tmp_path):
    base, _ = marsim("-r", "100")
    # a limit above the cycle count: no connection is refused because its
    # predecessors are still closing on a loaded machine
    relay = Relay(spawn, base, "--max-clients", "400", log=tmp_path / "log")
    relay.wait_listening()
    assert relay.wait_log("connected (COMMAND")
    time.sleep(0.3)  # the probe's handler thread is gone
    before = threads(relay.proc.pid)
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", relay.port(STAT if i % 2 else COMM)))
        if i % 3 == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def all_gone() -> bool:
        t = relay.text()
        return t.count(" disconnected (") == len(re.findall(r"client \S+ connected \(", t)) >= 250

    # every accepted connection was handled and closed
    assert wait_for(all_gone, 30)
    time.sleep(0.3)  # the last handler threads log before they leave the server's table
    # no handler or writer thread is left behind
    assert wait_for(lambda: threads(relay.proc.pid) <= before, 10), (
        before,
        threads(relay.proc.pid),
    )
    keep = [connect(relay.port(STAT)) for _ in range(10)]
    for s in keep:
        assert len(recv_exact(s, 404 * 3)) == 404 * 3
    for s in keep:
        s.close()
    assert relay.proc.poll() is None


def test_swap_round_trip(marsim, spawn, tmp_path):
    base, _ = marsim("-s", "-r", "100")
    relay = Relay(spawn, base, "--swap", log=tmp_path / "log")
    relay.wait_listening(MESS)
    stat = connect(relay.port(STAT))
    cs = counters(HW, recv_exact(stat, 404 * 5))
    assert cs == list(range(cs[0], cs[0] + 5)) and 0 < cs[0] < 10**6
    mess = connect(relay.port(MESS))
    c = connect(relay.port(COMM))
    rec = ask_until(c, cmd(P.Cmd.SET, 0, 278), mess, 84, P.parse_setparam)
    assert P.parse_setparam(rec) == (278, 240)
    for s in (stat, mess, c):
        s.close()


def test_unswapped_relay_of_a_swapped_simulator_shows_the_swap(marsim, spawn, tmp_path):
    base, _ = marsim("-s", "-r", "100")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening()
    stat = connect(relay.port(STAT))
    raw = recv_exact(stat, 404 * 3)
    little = [struct.unpack_from("<i", r, 4 + 4 * 61)[0] for r in P.split_records(raw, 404)]
    assert little == list(range(little[0], little[0] + 3))
    stat.close()


def test_hardware_kicking_marserver_makes_it_back_off(marsim, spawn, tmp_path):
    base, _ = marsim("-r", "20")
    relay = Relay(spawn, base, log=tmp_path / "log")
    relay.wait_listening()
    assert relay.wait_log("connected (COMMAND")
    for n in range(2, 5):
        # another program connects to the hardware directly: the hardware drops marserver
        intruder = socket.create_connection(("127.0.0.1", base + 1))
        assert relay.wait_log("connected (COMMAND", count=n, timeout=10)
        intruder.close()
    assert relay.wait_log("another program is probably connected to it directly")


def test_allow_list_refuses_other_networks(marsim, spawn, tmp_path):
    base, _ = marsim()
    relay = Relay(spawn, base, "-A", "10.0.0.0/8", log=tmp_path / "log")
    relay.wait_listening()
    s = connect(relay.port(STAT))
    assert is_closed(s)
    assert relay.wait_log("refused connection from 127.0.0.1 (not in allow-list)")


def test_commands_while_the_hardware_is_away_are_dropped_with_bounded_logging(spawn, tmp_path):
    # a client that keeps sending while the hardware is away must not flood the
    # log (one line per record); and nothing is replayed when it comes back
    hw_base = procs.free_port_block(4)
    relay = Relay(spawn, hw_base, log=tmp_path / "log")
    relay.wait_listening(COMM)
    assert relay.wait_log("cannot connect")
    c = connect(relay.port(COMM))
    c.sendall(cmd(P.Cmd.SHUTTER, 1) * 500)
    assert relay.wait_log("further commands dropped meanwhile are only counted")
    time.sleep(0.5)  # all 500 are read and dropped
    assert relay.text().count("hardware not connected, command from") == 10
    hw = FakeHardware(base=hw_base)
    try:
        assert relay.wait_log("500 command(s) arrived while the hardware was away", timeout=20)
        assert wait_for(hw.connected)
        time.sleep(0.3)
        assert bytes(hw.commands) == b""  # nothing replayed
        c.sendall(cmd(P.Cmd.SHUTTER, 0))
        assert wait_for(lambda: bytes(hw.commands) == cmd(P.Cmd.SHUTTER, 0))
    finally:
        c.close()
        hw.close()

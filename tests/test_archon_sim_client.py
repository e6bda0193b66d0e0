"""archonsim as real Archon clients see it, through an independent client.

The client below is written from the Archon wire format alone (a command is
``>`` + two hex digits of message reference + the command + newline; a reply
is ``<xx`` + text + newline, an error ``?xx`` + newline; a FETCH reply is
``<xx:`` + 1024 bytes per block).  It does not use camerad's controller code
or archonsrv's protocol module, and it upper-cases every command and
parameter name as asyncio Archon clients do.  It pipelines commands the way
such clients read the whole configuration memory at connect.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from archonsrv import sim
from tests.support import procs

pytestmark = pytest.mark.timeout(90)

DEMO_ACF = Path(__file__).resolve().parent.parent / "archonsrv" / "data" / "demo.acf"


class RawArchon:
    """A minimal Archon client: framing only, every command upper-cased."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=3.0)
        self.rx = b""
        self.ref = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self.ref = (self.ref + 1) % 256
        return self.ref

    def _line(self) -> bytes:
        while b"\n" not in self.rx:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.rx += data
        line, self.rx = self.rx.split(b"\n", 1)
        return line

    def send(self, text: str) -> int:
        ref = self._next()
        self.sock.sendall(b">%02X%s\n" % (ref, text.upper().encode()))
        return ref

    def reply(self, ref: int) -> tuple[bool, str]:
        line = self._line()
        assert line[1:3] == b"%02X" % ref, (line[:20], ref)
        assert line[:1] in (b"<", b"?"), line[:20]
        return line[:1] == b"<", line[3:].decode()

    def cmd(self, text: str) -> str:
        ok, body = self.reply(self.send(text))
        assert ok, f"{text}: error reply"
        return body

    def fails(self, text: str) -> bool:
        ok, body = self.reply(self.send(text))
        return not ok and body == ""

    def kv(self, text: str) -> dict[str, str]:
        return dict(tok.split("=", 1) for tok in self.cmd(text).split())

    def fetch(self, address: int, blocks: int) -> bytes:
        ref = self.send(f"FETCH{address:08X}{blocks:08X}")
        need = blocks * 1028
        while len(self.rx) < need:
            data = self.sock.recv(1 << 20)
            assert data
            self.rx += data
        raw, self.rx = self.rx[:need], self.rx[need:]
        out = bytearray()
        head = b"<%02X:" % ref
        for i in range(blocks):
            block = raw[i * 1028 : (i + 1) * 1028]
            assert block[:4] == head, (i, block[:4])
            out += block[4:]
        return bytes(out)


def acf_config_lines(extra_params: list[str]) -> list[str]:
    """[CONFIG] lines of the demo ACF as the GUI's INI reader gives them, upper-cased."""
    lines, section = [], ""
    for raw in DEMO_ACF.read_text().splitlines():
        raw = raw.strip()
        if raw.startswith("["):
            section = raw.strip("[]").upper()
        elif section == "CONFIG" and "=" in raw:
            key, value = raw.split("=", 1)
            lines.append(f"{key.replace(chr(92), '/').upper()}={value.strip(chr(34)).upper()}")
    n = sum(1 for x in lines if x.startswith("PARAMETER") and not x.startswith("PARAMETERS"))
    for i, name in enumerate(extra_params):
        lines.append(f"PARAMETER{n + i}={name}=0")
    return lines


def upload(a: RawArchon, lines: list[str]) -> None:
    a.cmd("CLEARCONFIG")
    a.cmd("POLLOFF")
    for i, line in enumerate(lines):
        a.cmd(f"WCONFIG{i:04X}{line}")
    a.cmd("POLLON")
    a.cmd("APPLYALL")


@pytest.fixture(scope="module")
def sdss_sim():
    port = procs.free_port()
    args = (
        "-p",
        str(port),
        "--readout-time",
        "100",
        "--expose-param",
        "Exposures",
        "--exptime-param",
        "IntCS",
        "--exptime-unit",
        "10",
        "--readout-param",
        "ReadOut",
        "--abort-param",
        "AbortExposure",
    )
    with procs.running("archonsrv.sim", *args, wait_for=port):
        a = RawArchon(port)
        upload(a, acf_config_lines(["IntCS", "Exposures", "ReadOut", "AbortExposure"]))
        yield a
        a.close()


def test_reading_the_whole_config_memory_at_connect(sdss_sim):
    a = sdss_sim
    replies = []
    for start in range(0, 16384, 64):  # pipelined, 64 commands in flight
        refs = [a.send(f"RCONFIG{n:04X}") for n in range(start, start + 64)]
        replies += [a.reply(r) for r in refs]
    assert all(ok for ok, _ in replies), "every RCONFIG of a valid line answers <xx"
    used = [body for _, body in replies if body]
    assert used[0].startswith("BIGBUF=") or "=" in used[0]
    assert replies[-1] == (True, "")  # an unused line is an empty reply
    assert sum(1 for _, b in replies if b == "") == 16384 - len(used)
    assert a.fails("RCONFIG12") and a.fails("RCONFIGXYZW")  # malformed: ?xx


def test_power_good_is_health_not_state(sdss_sim):
    a = sdss_sim
    a.cmd("POWEROFF")
    st = a.kv("STATUS")
    assert (st["POWER"], st["POWERGOOD"]) == ("2", "1")
    a.cmd("POWERON")
    st = a.kv("STATUS")
    assert (st["POWER"], st["POWERGOOD"]) == ("4", "1")
    a.cmd("SIMFAULT POWERBAD")
    assert a.kv("STATUS")["POWERGOOD"] == "0"
    assert a.kv("STATUS")["POWERGOOD"] == "0"  # a fault, not a one-shot
    a.cmd("SIMFAULT NONE")
    assert a.kv("STATUS")["POWERGOOD"] == "1"


def test_applymod_forms_always_answered(sdss_sim):
    a = sdss_sim
    for good in ("APPLYMOD5", "APPLYMOD1", "APPLYMOD12", "APPLYMOD04", "APPLYMOD0B", "APPLYDIO10"):
        assert a.cmd(good) == "", good
    for bad in ("APPLYMOD", "APPLYMOD0", "APPLYMOD13", "APPLYMODZZ", "APPLYMOD123", "APPLYDIO-1"):
        assert a.fails(bad), bad
    # the connection is still in step: a later command gets its own reply
    assert a.kv("TIMER")["TIMER"]


def test_parameter_names_are_case_insensitive(tmp_path):
    port = procs.free_port()
    with procs.running("archonsrv.sim", "-p", str(port), wait_for=port):
        a = RawArchon(port)
        try:
            # written in mixed case (as an ACF has it), set in upper case
            ref = a._next()
            a.sock.sendall(b">%02XWCONFIG0000PARAMETER0=IntMS=5\n" % ref)
            assert a.reply(ref) == (True, "")
            a.cmd("LOADPARAMS")
            assert a.cmd("FASTLOADPARAM INTMS 7") == ""
            ref = a._next()
            a.sock.sendall(b">%02XFASTLOADPARAM intms 8\n" % ref)
            assert a.reply(ref) == (True, "")
            assert a.fails("FASTLOADPARAM NOSUCH 1")
        finally:
            a.close()


def frame(a: RawArchon) -> dict[str, str]:
    return a.kv("FRAME")


def newest(fr: dict[str, str]) -> tuple[int, int]:
    """(frame number, buffer index) of the newest complete buffer, (0, 0) if none."""
    best = (0, 0)
    for n in (1, 2, 3):
        if fr.get(f"BUF{n}COMPLETE") == "1":
            best = max(best, (int(fr[f"BUF{n}FRAME"]), n))
    return best


def wait_frame(a: RawArchon, after: int, timeout: float = 10.0) -> tuple[int, int]:
    got = (0, 0)

    def done() -> bool:
        nonlocal got
        got = newest(frame(a))
        return got[0] > after

    assert procs.wait_until(done, timeout=timeout, step=0.02), f"no frame after {after}"
    return got


def test_expose_hold_release_readout_and_fetch(sdss_sim):
    a = sdss_sim
    before = newest(frame(a))[0]
    a.cmd("HOLDTIMING")
    a.cmd("FASTLOADPARAM READOUT 1")
    a.cmd("FASTLOADPARAM INTCS 5")  # 5 x 10 ms
    a.cmd("FASTLOADPARAM EXPOSURES 1")
    time.sleep(0.4)  # held: more than integration + readout, yet nothing happens
    assert newest(frame(a))[0] == before
    t_release = int(a.kv("TIMER")["TIMER"], 16)
    a.cmd("RELEASETIMING")
    number, buf = wait_frame(a, before)
    fr = frame(a)
    # the integration took at least IntCS x 10 ms of controller time after the release
    assert int(fr[f"BUF{buf}TIMESTAMP"], 16) - t_release >= 5 * 10 * 100_000
    w, h = int(fr[f"BUF{buf}WIDTH"]), int(fr[f"BUF{buf}HEIGHT"])
    nbytes = w * h * 2
    a.cmd(f"LOCK{buf}")
    data = a.fetch(int(fr[f"BUF{buf}BASE"]), -(-nbytes // 1024))
    a.cmd("LOCK0")
    image = np.frombuffer(data[:nbytes], dtype="<u2").reshape(h, w)
    assert np.array_equal(image, sim.synthetic_image(w, h, sim.DEFAULT_SEED, number))


def test_abort_without_readout_then_readout(sdss_sim):
    a = sdss_sim
    before = newest(frame(a))[0]
    a.cmd("HOLDTIMING")
    for name, value in (("READOUT", 0), ("ABORTEXPOSURE", 0), ("INTCS", 100000), ("EXPOSURES", 1)):
        a.cmd(f"FASTLOADPARAM {name} {value}")
    a.cmd("RELEASETIMING")
    time.sleep(0.2)
    a.cmd("FASTLOADPARAM ABORTEXPOSURE 1")  # ends the 1000 s integration now
    time.sleep(0.4)  # ReadOut is 0: the frame waits, no buffer is filled
    assert newest(frame(a))[0] == before
    a.cmd("HOLDTIMING")
    a.cmd("FASTLOADPARAM READOUT 1")
    a.cmd("RELEASETIMING")
    number, _ = wait_frame(a, before)
    assert number == before + 1
    a.cmd("FASTLOADPARAM ABORTEXPOSURE 0")

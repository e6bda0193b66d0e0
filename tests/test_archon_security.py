"""camerad on a shared network (issue 12, camerad parts): disclosure, path
confinement, ALLOW and connection limits, IMDIR checked before the exposure,
no partial FITS file under a final name when the disk is full."""

from __future__ import annotations

import resource
import signal
import socket
import time

import pytest
from astropy.io import fits

from tests.support import procs
from tests.support.archon_rig import Rig

pytestmark = pytest.mark.timeout(120)

CANARY = "CANARY-7f3a9"

# files that are not (good) ACFs, each with the canary where an error message
# would be tempted to quote it
CANARY_FILES = {
    "plain.acf": f"{CANARY} first line of a secret file\nsecond line\n",
    "value.acf": (
        f"[CONFIG]\nPIXELCOUNT={CANARY}\nLINECOUNT=4\nSAMPLEMODE=0\nFRAMEMODE=0\nRAWENABLE=0\n"
        "RAWSEL=0\nRAWSAMPLES=1\nRAWENDLINE=1\nBIGBUF=0\nTAPLINES=1\n"
        "[MODE_DEFAULT]\nARCH:NUM_DETECT=1\nARCH:HORI_AMPS=1\nARCH:VERT_AMPS=1\n"
    ),
    "kind.acf": f"[CONFIG]\nA=1\n[MODE_DEFAULT]\n{CANARY}:X=1\n",
    "modekey.acf": f"[CONFIG]\nA=1\n[MODE_DEFAULT]\nACF:{CANARY}=1\n",
    "dupmode.acf": f"[CONFIG]\nA=1\n[MODE_{CANARY}]\n[MODE_{CANARY}]\n",
    "typed.acf": f"[CONFIG]\nA=1\n[MODE_DEFAULT]\nACF{CANARY}\n",
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    work = tmp_path_factory.mktemp("security")
    r = Rig(work, readout_ms=200, NB_MAX_CONNECTIONS=3, BLK_MAX_CONNECTIONS=2)
    for name, text in CANARY_FILES.items():
        (work / name).write_text(text)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "good.acf").write_text((work / "plain.acf").read_text())
    r.outside = outside
    r.start()
    assert r.blk("open") == "DONE"
    assert r.blk("longerror true") == "true DONE"
    yield r
    r.stop()


def test_no_file_content_in_replies_or_async_messages(rig):
    rig.listener.clear()
    replies = []
    for name in CANARY_FILES:
        for cmd in ("load", "loadtiming"):
            reply = rig.blk(f"{cmd} {rig.dir / name}")
            assert reply.startswith("ERROR "), (name, reply)
            replies.append(reply)
            replies.append(rig.nb(f"{cmd} {name}"))  # relative: the config file's directory
    assert rig.blk("load") == "DONE"  # the ACF as shipped still loads
    assert rig.blk("mode NOSUCH").startswith("ERROR ")
    assert "line 1 is not KEY=VALUE" in replies[0]
    time.sleep(0.3)
    datagrams = rig.listener.drain()
    assert any(d.startswith("ERROR:") for d in datagrams)
    for text in replies + datagrams:
        assert CANARY not in text, text
        assert "secret" not in text


def test_load_and_systemfile_confined_to_firmware_dirs(rig):
    for cmd in (
        f"load {rig.outside / 'good.acf'}",
        "load /etc/passwd",
        f"loadtiming {rig.dir}/../{rig.outside.name}/good.acf",
        f"systemfile {rig.outside / 'sys.system'}",
    ):
        reply = rig.blk(cmd)
        assert reply.startswith("ERROR ") and "FIRMWARE_DIRS" in reply, (cmd, reply)
    assert not (rig.outside / "sys.system").exists()
    # a symbolic link inside an allowed directory pointing out of it is refused too
    link = rig.dir / "link.acf"
    link.symlink_to(rig.outside / "good.acf")
    assert "FIRMWARE_DIRS" in rig.blk(f"load {link}")
    assert rig.blk(f"systemfile {rig.dir / 'ok.system'}") == "DONE"
    assert (rig.dir / "ok.system").read_text().startswith("[SYSTEM]\n")


def _idle(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _closed_without_reply(s: socket.socket) -> bool:
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def _held_open(port: int) -> socket.socket:
    """An idle connection the server accepted (a refused one is retried, bounded):
    handlers of earlier connections may need a moment to leave the count."""
    for _ in range(20):
        s = _idle(port)
        s.settimeout(0.3)
        try:
            if s.recv(100) == b"":
                s.close()
                continue
        except TimeoutError:
            s.settimeout(5)
            return s
        raise AssertionError("an idle connection got a reply")
    raise AssertionError("the server kept refusing")


def test_connection_limits(rig):
    idle = [_held_open(rig.nbport) for _ in range(3)]
    try:
        extra = _idle(rig.nbport)
        extra.sendall(b"echo hi\n")
        assert _closed_without_reply(extra)  # over NB_MAX_CONNECTIONS=3
        extra.close()
    finally:
        for s in idle:
            s.close()
    assert procs.wait_until(lambda: rig.nb("echo back") == "back DONE", timeout=5)
    rig.close_blk()
    served = _idle(rig.blkport)
    served.sendall(b"echo one\n")
    assert served.recv(100) == b"one DONE\n"
    waiting = None
    try:
        # the handler of the closed connection may need a moment to leave the
        # count; a connection refused meanwhile is retried (bounded)
        for _ in range(20):
            waiting = _idle(rig.blkport)
            waiting.sendall(b"echo two\n")
            waiting.settimeout(0.5)
            try:
                if waiting.recv(100) == b"":
                    waiting.close()
                    continue
            except TimeoutError:
                break  # accepted: it waits for the served client
            raise AssertionError("the waiting client was answered while another is served")
        third = _idle(rig.blkport)  # over BLK_MAX_CONNECTIONS=2 (served + waiting)
        assert _closed_without_reply(third)
        third.close()
    finally:
        served.close()
        if waiting is not None:
            waiting.close()


def test_allow_list_on_both_ports(tmp_path):
    r = Rig(tmp_path, ALLOW="127.0.0.2/32, 10.0.0.0/8")
    with r:
        for port in (r.nbport, r.blkport):
            s = _idle(port)  # from 127.0.0.1: not allowed
            s.sendall(b"echo no\n")
            assert _closed_without_reply(s)
            s.close()
            s = _idle(port, source="127.0.0.2")
            s.sendall(b"echo yes\n")
            assert s.makefile("rb").readline() == b"yes DONE\n"
            s.close()
        log = (r.logdir).glob("camerad_*.log")
        assert any("not in allow-list" in p.read_text() for p in log)
        # SIGHUP applies a new ALLOW: now 127.0.0.1 only
        r.write_config(ALLOW="127.0.0.1")
        r.cam.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            s = _idle(r.nbport, source="127.0.0.2")
            s.sendall(b"echo two\n")
            refused = _closed_without_reply(s)
            s.close()
            return refused

        assert procs.wait_until(reloaded, timeout=10)
        assert r.nb("echo one") == "one DONE"


def test_imdir_checked_before_the_exposure(tmp_path):
    r = Rig(tmp_path, readout_ms=200, AUTODIR="no")
    with r:
        assert r.blk("open") == "DONE" and r.blk("load") == "DONE"
        assert r.blk("exptime 0") == "0 DONE"
        r.imdir.rmdir()
        r.imdir.write_text("not a directory")
        a = r.archon()
        try:
            frames_before = a.command("FRAME")
            r.listener.clear()
            reply = r.blk("expose")
            assert reply == "ERROR"  # longerror is off in this rig
            time.sleep(0.3)
            # no exposure was started: the simulator read out nothing
            assert (
                a.command("FRAME").split("TIMER=")[1].split(" ", 1)[1]
                == (frames_before.split("TIMER=")[1].split(" ", 1)[1])
            )
            assert not [m for m in r.listener.drain() if m.startswith("EXPOSURE:")]
        finally:
            a.close()


def _small_fsize() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.RLIM_INFINITY))


def test_disk_full_leaves_no_partial_file_under_a_final_name(tmp_path):
    # RLIMIT_FSIZE of 60 kB for camerad: a 128 kB image cannot be written
    r = Rig(tmp_path, readout_ms=200, camerad_kw={"preexec_fn": _small_fsize})
    with r:
        assert r.blk("open") == "DONE" and r.blk("load") == "DONE"
        assert r.blk("exptime 0") == "0 DONE"
        assert r.blk("longerror true") == "true DONE"
        for _ in range(2):
            r.listener.clear()
            reply = r.blk("expose")
            assert reply.startswith("ERROR "), reply
            msg = r.listener.wait_for("FILE:")
            assert msg is not None and msg.endswith(" ERROR"), msg
            assert r.all_files() == []  # neither a .fits nor a temporary file
            note = r.listener.wait_for("NOTICE:frame")
            assert note is not None and "readframe" in note  # streamed: still in the Archon
        assert r.blk("echo alive") == "alive DONE"
        r.blk("cubeamps true")  # the in-memory path (one extension per amplifier) too
        r.listener.clear()
        assert r.blk("expose").startswith("ERROR ")
        assert r.all_files() == []
        note = r.listener.wait_for("NOTICE:frame")
        assert note is not None and "kept in memory" in note
        # space again: the frame kept in memory is written, no frame was lost
        resource.prlimit(
            r.cam.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        path = r.blk("writeframe")
        assert path.endswith(".fits DONE"), path
        r.blk("cubeamps false")
        number = r.blk("readframe").split()[0]
        again = r.blk("writeframe")
        assert again.endswith(".fits DONE") and again != path
        assert len(r.fits_files()) == 2 and not [p for p in r.all_files() if ".part" in p.name]
        with fits.open(again.split()[0], checksum=True) as hdul:
            assert str(hdul[0].header["FRAMENUM"]) == number
            assert hdul[0].verify_checksum() == 1

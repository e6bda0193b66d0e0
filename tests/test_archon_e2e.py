"""camerad against archonsim over real sockets: seed session, sendsockcmd, async, FITS, reload."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import numpy as np
import pytest
from astropy.io import fits

from archonsrv import sim
from common.lock import read_pid
from tests.support import procs
from tests.support.archon_rig import Rig

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("archon"), readout_ms=200)
    r.start()
    yield r
    r.stop()


def loaded(rig: Rig) -> None:
    assert rig.blk("open") == "DONE"
    assert rig.blk("load") == "DONE"


def test_seed_telnet_session(rig):
    """The example session of the specification, line by line on the blocking port."""
    assert rig.blk("open") == "DONE"
    assert rig.blk("load") == "DONE"
    assert rig.blk("buffer 4200 4200") == "35280000 DONE"
    assert rig.blk("geometry 4200 4200") == "4200 4200 DONE"
    assert rig.blk("exptime 2000") == "2000 DONE"
    # a full 4200 x 4200 frame would take long here; the demo size for the exposure
    assert rig.blk("geometry 256 256") == "256 256 DONE"
    assert rig.blk("exptime 50") == "50 DONE"
    before = set(rig.fits_files())
    assert rig.blk("expose") == "DONE"
    new = set(rig.fits_files()) - before
    assert len(new) == 1


def test_telnet_style_crlf_and_empty_line(rig):
    assert rig.blk(b"echo hello there\r\n") == "hello there DONE"
    assert rig.blk(b"\r\n") == ""
    assert rig.blk("interface") == "STA-Archon DONE"


def test_sendsockcmd_on_nonblocking_port(rig):
    res = procs.run(
        "common.sendsockcmd", "-h", "127.0.0.1", "-p", str(rig.nbport), "exptime", "-t", "5000"
    )
    assert res.returncode == 0
    assert res.stdout.decode().strip().endswith("DONE")
    res = procs.run(
        "common.sendsockcmd", "-h", "127.0.0.1", "-p", str(rig.nbport), "echo", "hi", "there"
    )
    assert res.stdout == b"hi there DONE\n"
    # the connection is closed after the reply
    s = socket.create_connection(("127.0.0.1", rig.nbport), timeout=5)
    s.sendall(b"isloaded\n")
    data = b""
    while True:
        chunk = s.recv(1024)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data == b"true DONE\n"


def test_nonblocking_commands_in_parallel(rig):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(8) as ex:
        replies = list(ex.map(lambda i: rig.nb(f"echo n{i}"), range(24)))
    assert replies == [f"n{i} DONE" for i in range(24)]
    with cf.ThreadPoolExecutor(4) as ex:
        replies = list(ex.map(lambda i: rig.nb("getp exptime"), range(12)))
    assert all(r.endswith(" DONE") for r in replies)


def test_fits_pixels_and_keywords(rig):
    loaded(rig)
    rig.listener.clear()
    assert rig.blk("mode DEFAULT") == "DEFAULT DONE"
    assert rig.blk("exptime 120") == "120 DONE"
    assert rig.blk("key OBSERVER=Hale//who observed") == "DONE"
    assert rig.blk("key SEEING=0.8") == "DONE"
    assert rig.blk("key GONE=1") == "DONE"
    assert rig.blk("key GONE=.") == "DONE"
    assert rig.blk("fitsnaming number") == "number DONE"
    assert rig.blk("imnum 41") == "41 DONE"
    assert rig.blk("basename run") == "run DONE"
    assert rig.blk("expose") == "DONE"
    msg = rig.listener.wait_for("FILE:")
    assert msg is not None and msg.endswith(" COMPLETE")
    path = msg[len("FILE:") : -len(" COMPLETE")]
    assert path.endswith("run_0041.fits") and os.path.isfile(path)
    assert rig.blk("imnum") == "42 DONE"
    with fits.open(path) as hdul:
        h = hdul[0].header
        data = hdul[0].data
        assert h["BITPIX"] == 16 and h["BZERO"] == 32768
        assert data.dtype == np.uint16 and data.shape == (256, 256)
        expected = sim.synthetic_image(256, 256, sim.DEFAULT_SEED, h["FRAMENUM"])
        assert np.array_equal(data, expected)
        assert h["EXPTIME"] == 120 and "msec" in h.comments["EXPTIME"]
        assert h["FILENAME"] == "run_0041.fits"
        assert h["OBSERVER"] == "Hale" and h.comments["OBSERVER"] == "who observed"
        assert h["SEEING"] == 0.8 and "GONE" not in h
        assert h["TM_ZONE"] == "GMT" and h["SHUTTEN"] is True
        assert h["INSTRUME"] == "archonsim demo"  # from the ACF mode's FITS: lines
        for k in ("CAMD_VER", "DATE", "DATE-OBS", "FIRMWARE", "GAIN04", "OFFSET04", "MODE"):
            assert k in h
    # async progress during the exposure and readout
    tags = {m.split(":", 1)[0] for m in rig.listener.drain()}
    assert {"EXPOSURE", "LINECOUNT", "FILE"} <= tags
    assert rig.blk("fitsnaming time") == "time DONE"
    assert rig.blk("basename image") == "image DONE"


def test_autodir_date_directory(rig):
    loaded(rig)
    assert rig.blk("exptime 0") == "0 DONE"
    assert rig.blk("autodir yes") == "yes DONE"
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    assert os.path.basename(os.path.dirname(path)) == time.strftime("%Y%m%d", time.gmtime())
    assert rig.blk("autodir no") == "no DONE"
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    assert os.path.dirname(path) == str(rig.imdir)
    assert rig.blk("autodir maybe") == "ERROR"
    assert rig.blk("autodir yes") == "yes DONE"
    # "test fitsname" shows where the next file goes, date directory included
    assert rig.blk("fitsnaming number") == "number DONE"
    assert rig.blk("imnum 4321") == "4321 DONE"
    shown = rig.blk("test fitsname")
    assert shown.endswith(" DONE")
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    assert shown[: -len(" DONE")] == path
    assert os.path.basename(os.path.dirname(path)) == time.strftime("%Y%m%d", time.gmtime())
    assert rig.blk("fitsnaming time") == "time DONE"
    # a relative imdir is taken relative to the configuration file, not the cwd
    assert rig.blk("imdir relative/images") == f"{rig.dir}/relative/images DONE"
    assert (rig.dir / "relative" / "images").is_dir()
    assert rig.blk(f"imdir {rig.imdir}") == f"{rig.imdir} DONE"


def test_datacube_and_cubeamps(rig):
    loaded(rig)
    assert rig.blk("exptime 0") == "0 DONE"
    assert rig.blk("datacube true") == "true DONE"
    rig.listener.clear()
    assert rig.blk("expose 3") == "DONE"
    assert rig.listener.wait_for("DATACUBE:3 COMPLETE") is not None
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    with fits.open(path) as hdul:
        assert len(hdul) == 4 and hdul[0].header["NAXIS"] == 0
        frames = [hdul[i].header.get("FRAMENUM") for i in (1, 2, 3)]
        assert [hdul[i].header["EXTNAME"] for i in (1, 2, 3)] == ["1", "2", "3"]
        for i, fr in zip((1, 2, 3), frames, strict=True):
            assert np.array_equal(hdul[i].data, sim.synthetic_image(256, 256, 1, fr))
    assert rig.blk("datacube false") == "false DONE"
    assert rig.blk("cubeamps true") == "true DONE"
    assert rig.blk("datacube") == "true DONE"  # cubeamps forces datacube
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    with fits.open(path) as hdul:
        assert len(hdul) == 5
        fr = hdul[0].header["FRAMENUM"]
        full = sim.synthetic_image(256, 256, 1, fr)
        for i in range(1, 5):
            assert hdul[i].header["AMPSEC"] == f"[{(i - 1) * 64 + 1}:{i * 64},1:256]"
            assert np.array_equal(hdul[i].data, full[:, (i - 1) * 64 : i * 64])
    assert rig.blk("cubeamps false") == "false DONE"
    assert rig.blk("cubeamps banana") == "false ERROR"


def test_hdr_mode_32bit(rig):
    loaded(rig)
    assert rig.blk("exptime 0") == "0 DONE"
    assert rig.blk("mode HDR") == "HDR DONE"
    assert rig.blk("hdrshift 8") == "8 DONE"
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    with fits.open(path) as hdul:
        h = hdul[0].header
        assert h["BITPIX"] == 32 and h["HDRSHIFT"] == 8
        raw = sim.synthetic_image(256, 256, 1, h["FRAMENUM"], sample=1)
        assert np.array_equal(hdul[0].data, raw >> 8)
    assert rig.blk("hdrshift 40") == "ERROR"
    assert rig.blk("hdrshift") == "8 DONE"
    assert rig.blk("mode DEFAULT") == "DEFAULT DONE"


def test_parameters_native_and_modules(rig):
    loaded(rig)
    rig.listener.clear()
    assert rig.blk("setp Flush 0") == "0 DONE"
    assert rig.blk("getp Flush") == "1 DONE"  # config memory is not changed by setp
    assert rig.blk("writep Flush 0") == "0 DONE"
    assert rig.blk("getp Flush") == "0 DONE"
    assert rig.blk("getp NoSuchParam") == "ERROR"
    reply = rig.blk("native STATUS")
    assert "POWER=" in reply and reply.endswith("DONE")
    assert rig.listener.wait_for("STATUS:END") is not None
    assert rig.blk("power on") == "ON DONE"
    assert rig.blk("power") == "ON DONE"
    assert rig.blk("bias 4 1 -5.25") == "-5.25 DONE"
    assert rig.blk("bias 4 1") == "-5.25 DONE"
    assert rig.blk("bias 4 26 20") == "ERROR"  # HC range 0..14 V
    assert rig.blk("bias 9 3 30") == "30 DONE"
    assert rig.blk("bias 5 1 1") == "ERROR"  # AD module
    assert rig.blk("heater 2 A on -95.5") == "ON -95.5 DONE"
    assert rig.blk("heater 2 A") == "ON -95.5 DONE"
    assert rig.blk("heater 2 B PID 12 2 0.5") == "12 2 0.5 DONE"
    assert rig.blk("heater 2 B RAMP on 10") == "ON 10 DONE"
    assert rig.blk("heater 2 B ILIM 20000") == "ERROR"
    assert rig.blk("heater 2 B INPUT C") == "C DONE"
    assert rig.blk("sensor 2 A 20000") == "20000 DONE"
    assert rig.blk("sensor 2 A AVG 16") == "16 DONE"
    assert rig.blk("sensor 2 A AVG") == "16 DONE"
    assert rig.blk("inreg 10 3 255") == "DONE"
    assert rig.blk("inreg 10 16 1") == "ERROR"
    assert rig.blk("cds PIXELCOUNT") == "64 DONE"
    assert rig.blk("shutter disable") == "disabled DONE"
    assert rig.blk("shutter open") == "OPEN DONE"
    assert rig.blk("shutter reset") == "disabled DONE"
    assert rig.blk("shutter enable") == "enabled DONE"
    assert rig.blk("test modules").startswith("2:HeaterX")
    assert rig.blk("power off") == "OFF DONE"


def test_arc_only_and_unknown_commands(rig):
    assert rig.blk("longerror true") == "true DONE"
    assert "ARC" in rig.blk("useframes true")
    assert rig.blk("nosuchcommand").startswith("ERROR unrecognized")
    assert rig.blk("longerror false") == "false DONE"
    assert rig.blk("nosuchcommand") == "ERROR"


def test_sighup_reload(tmp_path):
    with Rig(tmp_path, readout_ms=200, BASENAME="first", HDR_SHIFT=8, AMPS_AS_CUBE="true") as rig:
        assert rig.blk("basename") == "first DONE"
        assert rig.blk("basename changed") == "changed DONE"
        assert rig.blk("longerror true") == "true DONE"
        assert rig.blk("hdrshift") == "8 DONE"
        assert rig.blk("cubeamps") == "true DONE"
        # keys removed from the file go back to their defaults, a short stray
        # line is skipped (not a reason to reject the file)
        rig.write_config(BASENAME="second", HDR_SHIFT=None, AMPS_AS_CUBE=None)
        rig.cfgfile.write_text(rig.cfgfile.read_text() + "x\n")
        rig.listener.clear()
        os.kill(rig.cam.pid, signal.SIGHUP)
        assert rig.listener.wait_for("CONFIG:BASENAME=second") is not None
        assert rig.blk("basename") == "second DONE"
        assert rig.blk("longerror") == "false DONE"  # every key reset to the file's value
        assert rig.blk("hdrshift") == "16 DONE"
        assert rig.blk("cubeamps") == "false DONE" and rig.blk("datacube") == "false DONE"
        # an invalid file is rejected and the old configuration kept
        rig.cfgfile.write_text(rig.cfgfile.read_text() + "HDR_SHIFT=99\n")
        os.kill(rig.cam.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert rig.blk("basename") == "second DONE"
        assert rig.cam.poll() is None
        logs = list((tmp_path / "logs").glob("camerad_*.log"))
        assert len(logs) == 1 and "configuration rejected" in logs[0].read_text()
        status = rig.stop()
        assert status["camerad"] == 0


def test_exit_command_stops_cleanly(tmp_path):
    rig = Rig(tmp_path).start()
    try:
        s = socket.create_connection(("127.0.0.1", rig.nbport), timeout=5)
        s.sendall(b"exit\n")
        assert s.recv(100) == b""  # no reply, connection closed
        s.close()
        assert rig.cam.wait(10) == 0
        assert not os.path.exists(f"/tmp/camerad.{rig.blkport}.pid")
    finally:
        rig.stop()


def test_trigin_expose_with_simulated_trigger(rig):
    loaded(rig)
    assert rig.blk("exptime 0") == "0 DONE"
    rig.listener.clear()
    assert rig.blk("trigin expose 2") == "DONE"
    assert rig.blk("expose") == "ERROR"  # armed: the frame buffers belong to the trigger
    a = rig.archon()
    try:
        for _ in range(2):
            a.command("SIMTRIGGER")
            assert rig.listener.wait_for("FILE:") is not None
            rig.listener.clear()
    finally:
        a.close()
    deadline = time.monotonic() + 5
    while rig.blk("test busy") != "false DONE" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.blk("trigin disable") == "DONE"
    assert rig.blk("trigin readout") == "DONE"
    assert rig.blk("trigin disable") == "DONE"
    assert rig.blk("test busy") == "false DONE"


def test_daemon_mode_with_lock_file(tmp_path):
    rig = Rig(tmp_path, DAEMON="yes")
    pid = None
    try:
        res = procs.run("archonsrv.cli", str(rig.cfgfile), "--lockfile", str(tmp_path / "cam.pid"))
        assert res.returncode == 0  # the parent returns once the daemon runs
        procs.wait_port(rig.nbport)
        deadline = time.monotonic() + 10  # the lock is taken after the fork
        while time.monotonic() < deadline:
            text = (tmp_path / "cam.pid").read_text() if (tmp_path / "cam.pid").exists() else ""
            if text.strip():
                break
            time.sleep(0.05)
        pid = int(text.split()[0])
        assert rig.nb("echo daemon") == "daemon DONE"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (tmp_path / "cam.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / "cam.pid").exists()
        assert list((tmp_path / "logs").glob("camerad_*.log"))
        pid = None
    finally:
        # never leak the daemon, even when the test failed before reading its PID
        for leftover in {pid, read_pid(tmp_path / "cam.pid")} - {None}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        rig.stop()


def test_abort_stops_a_running_exposure(rig):
    import threading

    loaded(rig)
    assert rig.blk("longerror true") == "true DONE"
    assert rig.blk("exptime 3000") == "3000 DONE"
    before = rig.fits_files()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", rig.blk("expose")))
    t.start()
    time.sleep(0.5)
    assert rig.nb("mode HDR").startswith("ERROR cannot change the mode during an exposure")
    assert rig.nb("geometry 128 128").startswith("ERROR cannot change")
    assert rig.nb("abort") == "DONE"
    t.join(10)
    assert result["r"] == "ERROR exposure aborted"
    assert rig.fits_files() == before
    assert rig.blk("exptime 0") == "0 DONE"


def test_raw_mode(rig):
    loaded(rig)
    assert rig.blk("longerror true") == "true DONE"
    assert rig.blk("exptime 0") == "0 DONE"
    assert rig.blk("mode RAW").startswith("ERROR mode RAW needs RAWENABLE=1")
    assert rig.blk("cds RAWENABLE 1") == "1 DONE"
    assert rig.blk("expose") == "DONE"  # an image frame with raw data behind it
    assert rig.blk("mode RAW") == "RAW DONE"
    rig.listener.clear()
    assert rig.blk("expose") == "DONE"  # reads the raw part of the newest buffer
    path = rig.listener.wait_for("FILE:")[5:].split()[0]
    with fits.open(path) as hdul:
        h = hdul[0].header
        assert (h["NAXIS1"], h["NAXIS2"], h["BITPIX"]) == (400, 64, 16)
        expected = sim.synthetic_raw(400, 64, h["FRAMENUM"]).reshape(64, 400)
        assert np.array_equal(hdul[0].data, expected)
    assert rig.blk("load") == "DONE"  # back to the ACF as shipped

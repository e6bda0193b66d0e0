"""camerad's camera engine in-process: no sockets, archonsim's state behind a SimLink.

The engine (:class:`archonsrv.camera.Camera`) is driven through its one entry
point, ``execute(line)``, against an in-process simulated controller whose
commands and replies still pass through the Archon wire encoder/decoder.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from archonsrv import config as C
from archonsrv import sim
from archonsrv.camera import COMMANDS, Camera
from archonsrv.camera.table import IDLE, LOADED, OPEN
from archonsrv.controller import Controller

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(tmp_path):
    state = sim.ArchonState(sim.SimSettings(readout_ms=60))
    cfg = C.parse(
        C.render(
            C.DEMO_CFG.read_text(),
            DEFAULT_FIRMWARE=str(C.DEMO_ACF),
            IMDIR=str(tmp_path),
            AUTODIR="no",
            READOUT_TIME=200,
            ASYNCGROUP="none",
        ),
        str(tmp_path / "cam.cfg"),
    )
    notes: list[tuple[str, str]] = []
    cam = Camera(cfg, lambda tag, msg: notes.append((tag, msg)), Controller(sim.SimLink(state)))
    yield cam, notes, state
    cam.shutdown()
    state.stop()


def test_table_states_preconditions():
    # the table, not the handlers, says what a command needs
    assert COMMANDS["getp"].needs == (LOADED,)
    assert COMMANDS["native"].needs == (OPEN,)
    assert COMMANDS["mode"].needs == () and COMMANDS["mode"].set_needs == (LOADED, IDLE)
    assert COMMANDS["printstatus"].handler is COMMANDS["framestatus"].handler


def test_preconditions_are_checked_before_the_handler(engine):
    cam, notes, state = engine
    assert cam.execute("longerror true") == "true DONE"
    assert cam.execute("getp exptime") == "ERROR not connected to the Archon (use open)"
    assert cam.execute("open") == "DONE"
    assert cam.execute("getp exptime") == "ERROR no firmware loaded (use load)"
    assert cam.execute("mode") == "ERROR no mode selected"  # query form needs nothing
    assert cam.execute("nosuch").startswith("ERROR unrecognized command")
    assert ("ERROR", " no firmware loaded (use load)") in notes


def test_expose_in_process_writes_the_simulated_frame(engine, tmp_path):
    cam, notes, state = engine
    for line, want in (
        ("open", "DONE"),
        ("load", "DONE"),
        ("mode", "DEFAULT DONE"),
        ("exptime 20", "20 DONE"),
        ("fitsnaming number", "number DONE"),
        ("expose 2", "DONE"),
    ):
        assert cam.execute(line) == want, line
    files = sorted(tmp_path.glob("image_*.fits"))
    assert [f.name for f in files] == ["image_0000.fits", "image_0001.fits"]
    for f in files:
        with fits.open(f) as hdul:
            h, data = hdul[0].header, hdul[0].data
            expected = sim.synthetic_image(256, 256, sim.DEFAULT_SEED, h["FRAMENUM"])
            assert np.array_equal(data, expected)
    done = [m for t, m in notes if t == "FILE"]
    assert done == [f"{files[0]} COMPLETE", f"{files[1]} COMPLETE"]
    # the simulated controller saw the exposure parameter (2 frames) and both readouts
    assert state.framecount == 2
    assert cam.execute("test busy") == "false DONE"


def verify_fits(path) -> None:
    """CHECKSUM/DATASUM in every HDU, correct for astropy and (if installed) fitsverify."""
    with fits.open(path, checksum=True) as hdul:
        for hdu in hdul:
            assert hdu.verify_datasum() == 1 and hdu.verify_checksum() == 1, (path, hdu.name)
    exe = shutil.which("fitsverify")
    if exe is not None:  # Debian package fitsverify; exit status = errors + warnings
        res = subprocess.run([exe, "-q", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr


def test_every_kind_of_file_verifies(engine, tmp_path):
    cam, notes, state = engine
    for line in ("open", "load", "exptime 0", "fitsnaming number", "hdrshift 4"):
        assert cam.execute(line).endswith("DONE"), line
    assert cam.execute("expose") == "DONE"  # streamed single image
    assert cam.execute("datacube true") == "true DONE"
    assert cam.execute("expose 2") == "DONE"  # one file, an extension per frame
    assert cam.execute("datacube false") == "false DONE"
    assert cam.execute("cubeamps true") == "true DONE"
    assert cam.execute("expose") == "DONE"  # an extension per amplifier
    assert cam.execute("cubeamps false") == "false DONE"
    assert cam.execute("mode HDR") == "HDR DONE"
    assert cam.execute("expose") == "DONE"  # 32-bit, streamed
    files = sorted(tmp_path.glob("image_*.fits"))
    assert len(files) == 4
    for f in files:
        verify_fits(f)
    with fits.open(files[1]) as hdul:
        assert len(hdul) == 3 and hdul[2].header["EXTNAME"] == "2"


def test_image_and_raw_file_when_rawenable(engine, tmp_path):
    cam, notes, state = engine
    for line in ("open", "load", "exptime 0", "fitsnaming number", "cds RAWENABLE 1"):
        assert cam.execute(line).endswith("DONE"), line
    assert cam.execute("expose") == "DONE"
    (path,) = tmp_path.glob("image_*.fits")
    verify_fits(path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "RAW"]
        n = hdul[0].header["FRAMENUM"]
        assert np.array_equal(hdul[0].data, sim.synthetic_image(256, 256, sim.DEFAULT_SEED, n))
        assert hdul["RAW"].header["FRAMENUM"] == n
        assert np.array_equal(hdul["RAW"].data, sim.synthetic_raw(400, 64, n).reshape(64, 400))


def test_test_timer_reports_and_sends_async(engine):
    cam, notes, state = engine
    assert cam.execute("test timer").startswith("ERROR")  # needs open
    assert cam.execute("open") == "DONE"
    reply = cam.execute("test timer 4 1000")
    assert re.fullmatch(r"mean=-?\d+\.\d stddev=\d+\.\d us DONE", reply), reply
    timer = [m for t, m in notes if t == "TEST_TIMER"]
    assert len(timer) == 4  # 3 intervals and the summary
    assert all(re.fullmatch(r"\d archon=\S+ host=\S+ diff=\S+", m) for m in timer[:3])
    assert cam.execute("test timer 1").startswith("ERROR")  # at least 2 samples


def test_readframe_writeframe(engine, tmp_path):
    cam, notes, state = engine
    for line in ("open", "load", "exptime 0", "fitsnaming number"):
        assert cam.execute(line).endswith("DONE"), line
    assert cam.execute("writeframe") == "ERROR"  # nothing held yet
    assert cam.execute("readframe").startswith("ERROR")  # no frame in the buffers yet
    assert cam.execute("expose") == "DONE"
    reply = cam.execute("readframe")
    number = int(reply.split()[0])
    assert reply == f"{number} DONE" and number == state.framecount
    assert cam.execute("readframe 3").startswith("ERROR")  # an empty buffer
    first = cam.execute("writeframe").split()[0]
    second = cam.execute("writeframe").split()[0]
    assert first != second
    for path in (first, second):
        verify_fits(path)
        with fits.open(path) as hdul:
            assert hdul[0].header["FRAMENUM"] == number
            expected = sim.synthetic_image(256, 256, sim.DEFAULT_SEED, number)
            assert np.array_equal(hdul[0].data, expected)

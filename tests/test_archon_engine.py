"""camerad's camera engine in-process: no sockets, archonsim's state behind a SimLink.

The engine (:class:`archonsrv.camera.Camera`) is driven through its one entry
point, ``execute(line)``, against an in-process simulated controller whose
commands and replies still pass through the Archon wire encoder/decoder.
"""

from __future__ import annotations

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

"""camerad + archonsim: the seed's telnet session, sendsockcmd, async tags, FITS files

Starts the Archon simulator and the camera server as real processes on free
loopback ports, runs the documented example session on the blocking port,
drives the non-blocking port with sendsockcmd, listens to the multicast
async port on 127.0.0.1, reads the FITS files back with astropy (pixels,
keywords, checksums), survives a controller fault, refuses a path outside
FIRMWARE_DIRS, and stops everything.
"""

from __future__ import annotations

import logging
import tempfile

import numpy as np
from astropy.io import fits

from archonsrv import sim
from tests.support import procs
from tests.support.archon_rig import Rig


def run(report) -> None:
    logging.getLogger("camerad").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="archon-demo-") as tmp:
        rig = Rig(tmp, readout_ms=200)
        rig.start()
        try:
            _scenario(rig, report)
        finally:
            status = rig.stop()
        report.check(
            "camerad and archonsim stop cleanly on SIGTERM",
            status.get("camerad") == 0 and status.get("archonsim") == 0,
            str(status),
        )


def _scenario(rig: Rig, report) -> None:
    report.step(
        f"archonsim on 127.0.0.1:{rig.sim_port}; camerad blocking port {rig.blkport}, "
        f"non-blocking {rig.nbport}, async {rig.group}:{rig.asyncport}"
    )
    session = [
        ("open", "DONE"),
        ("load", "DONE"),
        ("buffer 4200 4200", "35280000 DONE"),
        ("geometry 4200 4200", "4200 4200 DONE"),
        ("exptime 2000", "2000 DONE"),
    ]
    ok = True
    for cmd, want in session:
        got = rig.blk(cmd)
        report.step(f"telnet> {cmd:<20} {got}")
        ok &= got == want
    report.check("the specification's example session answers as documented", ok)
    # a smaller frame keeps the demo short; the benchmark does 4200 x 4200
    rig.blk("geometry 256 256")
    rig.blk("exptime 300")
    rig.blk("key OBSERVER=demo//who pressed the button")
    rig.listener.clear()
    got = rig.blk("expose")
    report.step(f"telnet> expose               {got}")
    path = (rig.listener.wait_for("FILE:") or "FILE:? ERROR")[5:].split()[0]
    tags = sorted({m.split(":", 1)[0] for m in rig.listener.drain()})
    report.check("expose answers DONE", got == "DONE")
    report.check(
        "async port carries EXPOSURE, LINECOUNT and FILE messages",
        {"EXPOSURE", "LINECOUNT", "FILE"} <= set(tags),
        ", ".join(tags),
    )
    try:
        with fits.open(path) as hdul:
            h = hdul[0].header
            same = np.array_equal(
                hdul[0].data, sim.synthetic_image(256, 256, sim.DEFAULT_SEED, h["FRAMENUM"])
            )
            report.check(
                "FITS file has the simulator's pixels, BZERO 32768 and the keywords",
                same and h["BZERO"] == 32768 and h["OBSERVER"] == "demo" and h["EXPTIME"] == 300,
                path,
            )
    except (OSError, KeyError) as exc:
        report.check("FITS file readable", False, str(exc))
    res = procs.run(
        "common.sendsockcmd", "-h", "127.0.0.1", "-p", str(rig.nbport), "imnum", "-t", "5000"
    )
    out = res.stdout.decode().strip()
    report.step(f"sendsockcmd -p {rig.nbport} imnum -> {out!r}")
    report.check("sendsockcmd works on the non-blocking port", out.endswith("DONE"))
    rig.blk("exptime 0")
    rig.blk("datacube true")
    rig.listener.clear()
    got = rig.blk("expose 3")
    cube = rig.listener.wait_for("DATACUBE:3 COMPLETE")
    report.step(f"datacube true; expose 3 -> {got}; {cube}")
    report.check("a 3-exposure data cube is written", got == "DONE" and cube is not None)
    rig.blk("datacube false")
    a = rig.archon()
    a.command("SIMFAULT FETCHDROP")
    a.close()
    rig.blk("longerror true")
    got = rig.blk("expose")
    report.step(f"controller drops the connection mid-FETCH: {got}")
    partial = [p for p in rig.all_files() if p.name.endswith(".part")]
    report.check(
        "the fault answers ERROR and leaves no partial file",
        got.startswith("ERROR") and not partial,
    )
    got = rig.blk("expose")
    report.check("the next exposure works (camerad reconnects)", got == "DONE", got)
    report.step(f"{len(rig.fits_files())} FITS files written under {rig.imdir}")
    good = True
    for f in rig.fits_files():
        with fits.open(f, checksum=True) as hdul:
            good &= all(h.verify_checksum() == 1 and h.verify_datasum() == 1 for h in hdul)
    report.check("every HDU of every file has a correct CHECKSUM and DATASUM", good)
    rig.blk("longerror true")
    got = rig.blk("load /etc/passwd")
    report.step(f"telnet> load /etc/passwd     {got}")
    report.check("a file outside FIRMWARE_DIRS is refused", "FIRMWARE_DIRS" in got, got)

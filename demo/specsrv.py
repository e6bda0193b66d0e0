"""spec server mode: find a server by name, move, count, watch and abort.

Starts ``specsrv`` as a real process serving as "demo4c" in a block of free
loopback ports (a decoy instance takes the first port), then drives it the way
a spec client or a GUI does: HELLO scan by name, a synchronised two-motor
move with position events, counting, variables, a data array, an aborted
infinite loop, and the ``spec-remote`` command.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from specsrv.client import RemoteError, SpecConnection
from tests.support import procs


def run(report) -> None:
    base = procs.free_port_block(3)
    rng = f"{base}-{base + 2}"
    common = ("-H", "127.0.0.1", "-S2", rng)
    decoy = procs.start("specsrv.cli", *common, "-N", "decoy")
    server = None
    conn = None
    try:
        procs.wait_port(base, proc=decoy)
        server = procs.start("specsrv.cli", *common, "-N", "demo4c")
        procs.wait_port(base + 1, proc=server)
        report.step(f"specsrv 'decoy' on {base}, 'demo4c' on the next free port of {rng}")

        conn = SpecConnection("127.0.0.1:demo4c", ports=range(base, base + 3), timeout=5)
        conn.connect()
        report.check(
            "client found 'demo4c' by scanning the port range",
            conn.connected_port == base + 1,
            f"port {conn.connected_port}",
        )

        events: list[tuple[str, object]] = []
        done = threading.Event()

        def on_event(value, prop, flags):
            events.append((prop, value))
            for mne in ("tth", "th"):
                moving = [v for p, v in events if p == f"motor/{mne}/move_done"]
                if moving[-1:] != [0] or 1 not in moving:
                    return
            done.set()

        watched = ("position", "move_done")
        for prop in (f"motor/{m}/{w}" for m in ("tth", "th") for w in watched):
            conn.prop_watch(prop, on_event)
        time.sleep(0.2)
        report.step("synchronised move: prestart_all, start_one tth 20, start_one th 10, start_all")
        conn.prop_put("motor/../prestart_all", "")
        conn.prop_put("motor/tth/start_one", 20)
        conn.prop_put("motor/th/start_one", 10)
        conn.prop_put("motor/../start_all", "")
        finished = done.wait(10)
        positions = [v for p, v in events if p == "motor/tth/position"]
        report.check(
            "both motors arrived, with position events on the way",
            finished
            and conn.prop_get("motor/tth/position") == 20
            and conn.prop_get("motor/th/position") == 10,
            f"{len(positions)} tth position events",
        )

        out = conn.remote_eval("ct 0.5")
        det = conn.prop_get("scaler/det/value")
        report.check("ct 0.5 counted the detector at 2500/s", det == 1250, f"det = {det}")
        report.step(
            "ct output: " + " | ".join(line.strip() for line in out.splitlines() if "=" in line)
        )

        conn.prop_put("var/SAMPLE", {"name": "LaB6", "temp": 295})
        value = conn.remote_eval('SAMPLE["name"] " at " SAMPLE["temp"] " K"')
        report.check(
            "associative array set by a client, used by a command", value == "LaB6 at 295 K", value
        )

        arr = np.random.default_rng(1).normal(size=100_000)
        conn.prop_put("var/DATA", arr)
        back = conn.prop_get("var/DATA")
        report.check("100000-element data array round trip", np.array_equal(back, arr))

        conn.timeout = 1.0
        try:
            conn.remote_eval("while (1) { n++ }")
            aborted = False
        except TimeoutError:
            aborted = True
        conn.timeout = 5
        report.check(
            "an infinite loop timed out, SV_ABORT stopped it, the server answers again",
            aborted and conn.remote_eval("2+2") == 4,
        )
        try:
            conn.remote_eval("mv tth 1000")
            limit = False
        except RemoteError as exc:
            limit = "limit" in str(exc)
        report.check("a move past the software limit is refused", limit)

        r = procs.run("specsrv.client", f"127.0.0.1:{base + 1}", "eval", "wa")
        report.check("spec-remote eval wa", r.returncode == 0 and b"tth" in r.stdout)

        conn.remote_eval("ascan tth 0 1 4 0.05", timeout=60)
        rows = conn.prop_get("var/SCAN_D")
        info = conn.prop_get("var/SCAN_D_INFO")
        report.check(
            "ascan: 5 points published in SCAN_D (the #L columns)",
            getattr(rows, "shape", (0,))[0] == 5 and list(rows[:, 0]) == [0, 0.25, 0.5, 0.75, 1],
            f"SCAN_D_INFO {info}",
        )
    finally:
        if conn is not None:
            conn.close()
        for p in (server, decoy):
            if p is not None:
                procs.stop(p)

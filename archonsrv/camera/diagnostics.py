"""The ``test`` command: diagnostics of the server and the controller."""

from __future__ import annotations

import logging
import time

from .. import archon as A
from . import headers
from .core import BUILD, Camera, CommandError, int_arg
from .exposure import MAX_NSEQ, plan, run
from .table import command

log = logging.getLogger("camerad")


@command("test")
def test(cam: Camera, args: str) -> str:
    parts = args.split()
    if not parts:
        raise CommandError("usage: test <testname> [args]")
    t = parts[0].lower()
    if t == "fitsname":
        now = time.time()
        return str(headers.dir_for(cam, now) / headers.name_for(cam, now))
    if t == "builddate":
        return BUILD
    if t == "async":
        msg = " ".join(parts[1:]) or "test"
        cam.notify("TEST", msg)
        return ""
    if t == "modules":
        return " ".join(f"{s}:{k}" for s, k in sorted(cam.modules.items()))
    if t == "busy":
        return "true" if cam.expose_lock.locked() else "false"
    if t in ("amplist", "ampinfo"):
        if cam.geometry is None:
            raise CommandError("no mode selected")
        return " ".join(f"[{a}:{b},{c}:{d}]" for a, b, c, d in cam.geometry.amp_sections)
    if t == "parammap":
        for i, (k, v) in enumerate(cam.cfgmem):
            if A.is_param_key(k):
                log.info("param line %04X %s", i, v)
        return ""
    if t == "configmap":
        for i, (k, v) in enumerate(cam.cfgmem):
            log.info("config line %04X %s=%s", i, k, v)
        return ""
    if t == "bw":
        nseq = int_arg(parts[1], "nseq", 1, MAX_NSEQ) if len(parts) > 1 else 1
        if not cam.expose_lock.acquire(blocking=False):
            raise CommandError("an exposure is already in progress")
        try:
            t0 = time.monotonic()
            run(cam, plan(cam, nseq, pre=0, timed=True, wait_forever=False, write=False))
            dt = time.monotonic() - t0
        finally:
            cam.expose_lock.release()
        mb = nseq * cam.geometry.image_bytes / 1e6
        return f"{mb / dt:.1f} MB/s"
    raise CommandError(f"unknown test {t[:20]!r}")

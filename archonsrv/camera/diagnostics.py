"""The ``test`` command: diagnostics of the server and the controller."""

from __future__ import annotations

import logging
import time

from .. import archon as A
from . import headers, sinks
from .core import BUILD, Camera, CommandError, int_arg
from .exposure import MAX_NSEQ, ExposurePlan, plan, run
from .table import IDLE, LOADED, command

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
    if t == "timer":
        return timer_test(cam, parts[1:])
    raise CommandError(f"unknown test {t[:20]!r}")


MAX_TIMER_SAMPLES = 10000


def timer_test(cam: Camera, args: list[str]) -> str:
    """``test timer [nseq [wait_us]]``: the Archon TIMER against the host clock.

    Reads TIMER ``nseq`` times, ``wait_us`` apart; for each interval sends
    ``TEST_TIMER:i archon=.. host=.. diff=..`` (microseconds) and answers the
    mean and standard deviation of the differences.
    """
    cam.need_open()
    if len(args) > 2:
        raise CommandError("usage: test timer [nseq [wait_us]]")
    nseq = int_arg(args[0], "nseq", 2, MAX_TIMER_SAMPLES) if args else 10
    wait_us = int_arg(args[1], "wait_us", 0, 10_000_000) if len(args) > 1 else 100_000
    cam.abort_event.clear()
    diffs: list[float] = []
    last: tuple[int, float] | None = None
    for i in range(nseq):
        before = time.monotonic()
        ticks = cam.ctl.timer()
        host = (before + time.monotonic()) / 2  # the reply's moment, as well as we know it
        if last is not None:
            archon_us = (ticks - last[0]) / 100.0  # 10 ns ticks
            host_us = (host - last[1]) * 1e6
            diffs.append(archon_us - host_us)
            cam.notify(
                "TEST_TIMER",
                f"{i} archon={archon_us:.1f} host={host_us:.1f} diff={diffs[-1]:.1f}",
            )
        last = (ticks, host)
        if i + 1 < nseq and cam.abort_event.wait(wait_us / 1e6):
            raise CommandError("test timer aborted")
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / len(diffs)) ** 0.5
    result = f"mean={mean:.1f} stddev={sd:.1f} us"
    cam.notify("TEST_TIMER", result)
    return result


# -- debug commands: read a frame buffer, write it later ---------------------------


@command("readframe", needs=(LOADED, IDLE), busy_what="the frame held")
def readframe(cam: Camera, args: str) -> str:
    """Read the newest complete frame buffer (or buffer 1-3) into memory."""
    if cam.mode is None or cam.geometry is None:
        raise CommandError("no mode selected")
    parts = args.split()
    if len(parts) > 1:
        raise CommandError("usage: readframe [buffer]")
    fs = cam.ctl.frame()
    if parts:
        n = int_arg(parts[0], "buffer", 1, 3)
        buf = next((b for b in fs.buffers if b.index == n and b.complete), None)
        if buf is None:
            raise CommandError(f"frame buffer {n} holds no complete frame")
    else:
        buf = fs.newest()
        if buf is None:
            raise CommandError("no complete frame in the Archon buffers")
    geom = cam.geometry
    image = sinks.read_frame(cam, buf, geom)
    with cam.lock:
        cam.held_frame = (buf, image, time.time(), geom, cam.mode, headers.user_cards(cam))
    log.info("readframe: frame %d from buffer %d held in memory", buf.frame, buf.index)
    return str(buf.frame)


@command("writeframe", needs=(IDLE,), busy_what="the frame held")
def writeframe(cam: Camera, args: str) -> str:
    """Write the frame held by readframe to a FITS file; answer its path."""
    with cam.lock:
        held = cam.held_frame
    if held is None:
        raise CommandError("no frame held (use readframe)")
    buf, image, start, geom, mode, keys = held
    p = ExposurePlan(1, 0, False, False, True, geom, mode)
    path = sinks.AmpsSink(cam, p).write(start, keys, buf, image)
    return str(path)

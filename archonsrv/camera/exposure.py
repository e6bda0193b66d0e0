"""The exposure path: an :class:`ExposurePlan` run frame by frame into a sink.

:func:`run` waits for each exposure (host clock, then the Archon TIMER),
waits for the readout (FRAME), and hands each frame buffer to a sink from
:mod:`.sinks`: one streamed file per frame, one file with an extension per
amplifier, a data cube of all frames, or nothing (``test bw``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .. import acf as ACF
from .. import archon as A
from ..controller import ArchonError
from . import fitsio, headers, sinks
from .core import Aborted, Camera, CommandError, int_arg
from .table import command

log = logging.getLogger("camerad")

MAX_NSEQ = 10000
POLL = 0.002


@dataclass(frozen=True)
class ExposurePlan:
    """What one ``expose``/``trigin`` sequence does, decided before it starts."""

    n: int  # frames to keep
    pre: int  # pre-exposures read out and thrown away
    timed: bool  # camerad starts the exposures (EXPOSE_PARAM); else a trigger does
    wait_forever: bool  # wait for a trigger without a readout timeout
    write: bool  # False: read the frames, write nothing (test bw)
    geometry: ACF.Geometry
    mode: str

    @property
    def nseq(self) -> int:
        return self.n + self.pre

    @property
    def raw(self) -> bool:
        return self.mode == "RAW"

    @property
    def drives_expose_param(self) -> bool:
        return self.timed and not self.raw


def check_ready(cam: Camera) -> ACF.Geometry:
    cam.need_loaded()
    if cam.mode is None or cam.geometry is None:
        raise CommandError("no mode selected")
    if not cam.cfg.expose_param:
        raise CommandError("EXPOSE_PARAM is not configured")
    if cam.cfg.readout_time <= 0:
        raise CommandError("READOUT_TIME is not configured")
    return cam.geometry


def plan(cam: Camera, n: int, pre: int, timed: bool, wait_forever: bool, write=True):
    geom = check_ready(cam)
    if write:
        headers.check_writable(cam)
    return ExposurePlan(n, pre, timed, wait_forever, write, geom, cam.mode or "")


def run(cam: Camera, p: ExposurePlan) -> int:
    """Run a plan; return the number of frames kept.  Raises CommandError etc."""
    cam.abort_event.clear()
    if cam.exptime is None:
        cam.notify("NOTICE", "exptime has not been set--will read from Archon")
        cam.exptime = int_arg(cam.getp("exptime"), "exptime", 0, 2**32)
    if cam.longexposure is None:
        cam.longexposure = cam.param_line("longexposure") is not None and cam.getp(
            "longexposure"
        ) not in ("0", "")
    if p.timed and cam.cfg.shutenable_param and not p.raw:
        value = cam.cfg.shutenable_enable if cam.shutter_enabled else cam.cfg.shutenable_disable
        if cam._shutter_written != value:  # written once per load and on change
            cam.setp(cam.cfg.shutenable_param, value)
            cam._shutter_written = value
    newest = cam.ctl.frame().newest()
    last = newest.frame if newest else 0
    sink = sinks.choose(cam, p)
    frames_done = 0
    cam.exposing = True
    try:
        if p.drives_expose_param:
            cam.setp(cam.cfg.expose_param, str(p.nseq))
        for i in range(p.nseq):
            start = time.time()
            keys = headers.user_cards(cam)
            if p.drives_expose_param:
                wait_exposure(cam, start, cam.ctl.timer())
            if cam.writekeys == "after":
                keys = headers.user_cards(cam)
            if p.raw and p.timed:
                buf = cam.ctl.frame().newest()
                if buf is None:
                    raise CommandError("no frame in the Archon buffers to read RAW data from")
            else:
                buf = wait_readout(cam, last, p.wait_forever)
                last = buf.frame
            if i < p.pre:
                log.info("pre-exposure %d of %d done (frame %d)", i + 1, p.pre, buf.frame)
                continue
            sink.frame(i - p.pre + 1, start, keys, buf)
            frames_done += 1
        sink.close()
    except BaseException:
        sink.abort()
        if p.drives_expose_param:
            stop_sequence(cam)
        raise
    finally:
        cam.exposing = False
    return frames_done


def stop_sequence(cam: Camera) -> None:
    try:
        if cam.ctl.is_open:
            cam.setp(cam.cfg.expose_param, "0")
    except ArchonError as exc:
        log.warning("could not stop the exposure sequence: %s", exc)


def check_abort(cam: Camera) -> None:
    if cam.abort_event.is_set():
        raise Aborted("exposure aborted")


def wait_exposure(cam: Camera, start: float, t0_ticks: int) -> None:
    exptime = cam.exptime or 0
    if exptime <= 0:
        return
    factor = 1.0 if cam.longexposure else 1000.0
    total = exptime / factor
    end = start + total
    last_note = 0.0
    while True:
        check_abort(cam)
        now = time.time()
        left = end - now
        if left <= total * 0.1:
            break
        if now - last_note >= 0.1:
            cam.notify("EXPOSURE", str(max(0, int(left * factor))))
            last_note = now
        cam.abort_event.wait(min(0.1, left - total * 0.1))
    need_ticks = int(exptime * 1e8 / factor)
    guard = time.monotonic() + total + 2.0
    while True:
        check_abort(cam)
        if cam.ctl.timer() - t0_ticks >= need_ticks:
            break
        if time.monotonic() > guard:
            log.warning("Archon TIMER did not reach the exposure time; going on")
            break
        time.sleep(0.001)
    cam.notify("EXPOSURE", "0")


def wait_readout(cam: Camera, last: int, wait_forever: bool) -> A.BufferStatus:
    timeout = cam.cfg.readout_time * 1.1 / 1000.0
    deadline = time.monotonic() + timeout
    lastlines = -1
    busy = 0
    while True:
        check_abort(cam)
        if wait_forever and cam.trig_stop.is_set():
            raise Aborted("triggered exposure disabled")
        try:
            fs = cam.ctl.frame()
        except A.ProtocolError as exc:
            busy += 1
            if busy > 300:
                raise CommandError(f"FRAME replies unusable: {exc}") from None
            time.sleep(POLL)
            continue
        buf = fs.find_frame(last + 1)
        if buf is None:
            newest = fs.newest()
            if newest is not None and newest.frame > last:
                buf = newest
        if buf is not None:
            return buf
        wb = fs.writing()
        if wb is not None and wb.lines != lastlines:
            lastlines = wb.lines
            cam.notify("LINECOUNT", str(wb.lines))
        if not wait_forever and time.monotonic() > deadline:
            raise CommandError(
                f"readout timeout: no new frame within {timeout * 1000:.0f} ms "
                f"(READOUT_TIME {cam.cfg.readout_time} + 10 %)"
            )
        (cam.trig_stop if wait_forever else cam.abort_event).wait(POLL)


# -- commands --------------------------------------------------------------------


@command("abort")
def abort(cam: Camera, args: str) -> str:
    cam.abort_event.set()
    cam.trig_stop.set()
    return ""


@command("expose")
def expose(cam: Camera, args: str) -> str:
    n = int_arg(args.strip(), "number of exposures", 1, MAX_NSEQ) if args.strip() else 1
    if not cam.expose_lock.acquire(blocking=False):
        raise CommandError("an exposure is already in progress")
    try:
        run(cam, plan(cam, n, pre=cam.preexposures, timed=True, wait_forever=False))
    finally:
        cam.expose_lock.release()
    return ""


def trigger_worker(cam: Camera, n: int, form: str) -> None:
    try:
        run(cam, plan(cam, n, pre=0, timed=False, wait_forever=True))
    except CommandError as exc:
        cam.fail(f"trigin {form}", str(exc))
    except (ArchonError, fitsio.FitsWriteError) as exc:
        cam.fail(f"trigin {form}", str(exc))
    except Exception as exc:  # noqa: BLE001 - background thread must report, not die
        log.exception("triggered exposure failed")
        cam.fail(f"trigin {form}", f"internal error: {exc}")
    finally:
        cam.expose_lock.release()


def start_trigger_thread(cam: Camera, n: int, form: str) -> None:
    cam.trig_stop.clear()
    cam.trig_thread = threading.Thread(
        target=trigger_worker, args=(cam, n, form), name="camerad-trigin", daemon=True
    )
    cam.trig_thread.start()

"""FITS header cards, file names and image directories of camerad."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .. import acf as ACF
from .. import archon as A
from .. import protocol as P
from . import fitsio
from .core import BUILD, Camera, CommandError


def localtime(cam: Camera, t: float) -> time.struct_time:
    return time.localtime(t) if cam.cfg.tm_zone == "local" else time.gmtime(t)


def stamp(cam: Camera, t: float) -> str:
    st = localtime(cam, t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", st) + f".{int(t * 1000) % 1000:03d}"


def dir_for(cam: Camera, start: float) -> Path:
    base = Path(cam.imdir)
    if not cam.autodir:
        return base
    return base / time.strftime("%Y%m%d", localtime(cam, start))


def target_dir(cam: Camera, start: float) -> Path:
    d = dir_for(cam, start)
    if not cam.autodir:
        return d
    try:
        d.mkdir(mode=cam.cfg.dirmode, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create image directory {d}: {exc.strerror}") from None
    return d


def probe_writable(path: Path) -> None:
    """Create and remove a file in ``path``; OSError if that is not possible."""
    fd, probe = tempfile.mkstemp(prefix=".camerad-probe-", dir=path)
    os.close(fd)
    os.unlink(probe)


def check_writable(cam: Camera) -> None:
    """The image directory of an exposure starting now exists and takes a file.

    Checked before the exposure starts, so that a missing or read-only IMDIR
    costs an ERROR reply, not an exposure lost after its readout.
    """
    d = target_dir(cam, time.time())
    try:
        probe_writable(d)
    except OSError as exc:
        raise CommandError(
            f"cannot write to image directory {d} ({exc.strerror or exc}); no exposure taken"
        ) from None


def name_for(cam: Camera, start: float) -> str:
    st = time.strftime("%Y%m%d%H%M%S", localtime(cam, start))
    return P.fits_basename(cam.basename, cam.fitsnaming, cam.imnum, st)


def system_cards(cam: Camera, buf: A.BufferStatus | None, start: float | None) -> list:
    geom = cam.geometry
    cards: list[fitsio.Card] = [
        ("CAMD_VER", BUILD, "camerad build date"),
        (
            "EXPTIME",
            cam.exptime if cam.exptime is not None else 0,
            f"exposure time in {cam.unit()}",
        ),
        ("TM_ZONE", "local" if cam.cfg.tm_zone == "local" else "GMT", "time zone"),
        ("SHUTTEN", bool(cam.shutter_enabled), "shutter enabled"),
    ]
    if start is not None:
        cards.append(("DATE-OBS", stamp(cam, start), "exposure start"))
    if cam.shutter_forced:
        cards.append(("SHUTFORC", 1, f"shutter forced {cam.shutter_forced.lower()}"))
    cards.append(("MODE", cam.mode or "", "camera mode"))
    cards.append(("FIRMWARE", cam.acf_path[-68:], "ACF file"))
    if geom is not None and geom.bitpix == 32:
        cards.append(("HDRSHIFT", cam.hdrshift, "HDR right shift (bits)"))
    if buf is not None:
        cards.append(("FRAMENUM", buf.frame, "Archon frame number"))
    cards.append(("IMNUM", cam.imnum, "image number"))
    for ch, (gain, offset) in sorted(ACF.tap_gains(cam.values()).items()):
        if ch > 99:
            continue
        try:
            g: object = float(gain)
        except ValueError:
            g = gain
        try:
            o: object = int(offset)
        except ValueError:
            o = offset
        cards.append((f"GAIN{ch:02d}", g, f"gain of AD channel {ch}"))
        cards.append((f"OFFSET{ch:02d}", o, f"offset of AD channel {ch}"))
    return cards


def user_cards(cam: Camera) -> list:
    cards: list[fitsio.Card] = []
    if cam.acf is not None and cam.mode in (cam.acf.modes if cam.acf else {}):
        for k, (v, c) in cam.acf.modes[cam.mode].fits.items():
            try:
                cards.append((k, P.parse_user_key(f"{k}={v}").value, c))
            except ValueError:
                continue
    with cam.lock:
        cards.extend((uk.keyword, uk.value, uk.comment) for uk in cam.userkeys.values())
    return cards


def cards(cam: Camera, name: str, buf, start: float, keys: list) -> list:
    merged: dict[str, fitsio.Card] = {}
    for card in [("FILENAME", name, "file name"), *system_cards(cam, buf, start), *keys]:
        merged[card[0]] = card  # a user key overrides a system key of the same name
    return list(merged.values())

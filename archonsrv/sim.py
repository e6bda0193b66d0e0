"""archonsim: a simulated STA Archon CCD controller on TCP.

It speaks the Archon protocol of :mod:`archonsrv.archon` (``>xxCMD`` /
``<xx...`` / ``?xx``): configuration memory (WCONFIG, RCONFIG, CLEARCONFIG),
APPLY* and LOAD* commands, parameters (PREPPARAM/LOADPARAM and their FAST
variants), POWERON/POWEROFF, SYSTEM, STATUS, FRAME, TIMER, FETCHLOG, LOCKn
and FETCH.  Writing a value N > 0 to the exposure parameter starts N
exposures: the exposure-time parameter (name and unit configurable) in real
time, then a readout that fills a frame buffer line by line over 90 % of
READOUT_TIME (visible in FRAME), with a synthetic image (bias, gradient,
stars, noise; deterministic for a seed and frame number).  HOLDTIMING stops
all progress until RELEASETIMING; an optional readout parameter defers the
readout, an optional abort parameter ends an integration.  Parameter names
match in any case.  Unknown command words get no reply, as on the real
controller; malformed forms of known commands get ``?xx``.  Two extensions
help tests: ``SIMFAULT name`` arms a fault and ``SIMTRIGGER`` acts as a
pulse on the TRIGIN input.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import cli, runtime
from common.config import MAX_CONFIG_BYTES, ConfigError, read_bounded, read_keyvalue
from common.framing import OverlongLine
from common.ratelimit import LogLimiter
from common.server import ConnectionClosed, LineHandler, ThreadedTCPServer

from . import archon as A
from .config import CONFIG_MIN_LINE
from .controller import ArchonError

log = logging.getLogger("archonsim")

DEFAULT_PORT = 4242
DEFAULT_READOUT_MS = 500
DEFAULT_SEED = 1
FAULTS = ("FETCHDROP", "FETCHSHORT", "NOREADOUT", "NOREPLY", "POWERBAD")

DEFAULT_SYSTEM = {
    "BACKPLANE_TYPE": "2",
    "BACKPLANE_REV": "2",
    "BACKPLANE_VERSION": "1.0.1054",
    "BACKPLANE_ID": "0123456789ABCDEF",
    "MOD2_TYPE": "11",
    "MOD3_TYPE": "1",
    "MOD4_TYPE": "9",
    "MOD5_TYPE": "2",
    "MOD6_TYPE": "2",
    "MOD9_TYPE": "8",
    "MOD10_TYPE": "10",
}


# ---------------------------------------------------------------------------
# synthetic images
# ---------------------------------------------------------------------------

_cache: dict[tuple, np.ndarray] = {}
_cache_lock = threading.Lock()


def _base_image(width: int, height: int, seed: int) -> np.ndarray:
    key = (width, height, seed)
    with _cache_lock:
        img = _cache.get(key)
        if img is not None:
            return img
    rng = np.random.default_rng(seed)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    img = 1000.0 + 400.0 * x / max(width, 1) + 200.0 * y / max(height, 1)
    img = img + rng.normal(0.0, 4.0, size=(height, width)).astype(np.float32)
    nstars = 5 + int(rng.integers(0, 10))
    for _ in range(nstars):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        peak = float(rng.uniform(2000, 40000))
        sigma = float(rng.uniform(1.0, 3.0))
        r = int(4 * sigma) + 1
        x0, x1 = max(0, int(cx) - r), min(width, int(cx) + r + 1)
        y0, y1 = max(0, int(cy) - r), min(height, int(cy) + r + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    out = np.clip(np.rint(img), 0, 65000).astype(np.uint16)
    with _cache_lock:
        if len(_cache) >= 2:
            _cache.pop(next(iter(_cache)))
        _cache[key] = out
    return out


def synthetic_image(width: int, height: int, seed: int, frame: int, sample: int = 0) -> np.ndarray:
    """The image archonsim reads out as frame number ``frame`` (1, 2, ...).

    uint16 for SAMPLEMODE 0; uint32 (the 16-bit image times 65536 plus the
    frame number modulo 65536) for SAMPLEMODE 1.
    """
    base = _base_image(width, height, seed)
    if sample:
        return (base.astype(np.uint32) << np.uint32(16)) + np.uint32(frame & 0xFFFF)
    return base + np.uint16(frame % 32)


def synthetic_raw(samples: int, lines: int, frame: int) -> np.ndarray:
    n = samples * lines
    return ((np.arange(n, dtype=np.uint32) * 7 + frame) & 0xFFFF).astype(np.uint16)


def build_wire(g: SimGeometry, seed: int, frame: int) -> tuple[np.ndarray, int]:
    """Frame buffer ``frame`` as FETCH blocks (headers blank) and its RAWOFFSET.

    The common case (16-bit image, no raw data) is computed straight into
    the block array, one pass over the memory.
    """
    npix = g.width * g.height
    if g.sample == 0 and not g.rawenable and npix:
        base = _base_image(g.width, g.height, seed).reshape(-1)
        per = A.BLOCK // 2
        blocks = A.blocks_for(npix * 2)
        wire = np.empty((blocks, A.BLOCK_WIRE), dtype=np.uint8)
        w16 = wire.view("<u2")  # (blocks, 514): 2 header words, 512 pixels
        full, rest = divmod(npix, per)
        add = np.uint16(frame % 32)
        if full:
            np.add(base[: full * per].reshape(full, per), add, out=w16[:full, 2:])
        if rest:
            w16[full, 2 : 2 + rest] = base[full * per :] + add
            w16[full, 2 + rest :] = 0xFFFF
        return wire, A.blocks_for(npix * 2) * A.BLOCK
    image = synthetic_image(g.width, g.height, seed, frame, g.sample)
    data = image.reshape(-1).view(np.uint8)
    rawoffset = A.blocks_for(len(data)) * A.BLOCK
    if g.rawenable and g.rawsamples and g.rawlines:
        raw = synthetic_raw(g.rawsamples, g.rawlines, frame).view(np.uint8)
        whole = np.full(rawoffset + len(raw), 0xFF, dtype=np.uint8)
        whole[: len(data)] = data
        whole[rawoffset:] = raw
        data = whole
    return A.fetch_wire(data, A.blocks_for(len(data))), rawoffset


_BUF_FIELDS = dataclasses.fields(A.BufferStatus)

# ---------------------------------------------------------------------------
# controller state
# ---------------------------------------------------------------------------


@dataclass
class SimSettings:
    seed: int = DEFAULT_SEED
    readout_ms: int = DEFAULT_READOUT_MS
    expose_param: str = "Expose"  # exposure count: N > 0 starts N exposures
    exptime_param: str = "exptime"  # integration time ...
    exptime_unit_ms: float = 1.0  # ... in units of this many ms (IntCS: 10)
    readout_param: str = ""  # if set, read out after integrating only when it is non-zero
    abort_param: str = ""  # if set, a non-zero value ends the integration early
    trigin_expose_param: str = "TrigExpose"
    trigin_readout_param: str = "TrigReadout"
    system: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SYSTEM))


@dataclass
class SimBuffer(A.BufferStatus):
    wire: np.ndarray | None = None  # the buffer as FETCH blocks (image, then raw)


@dataclass
class SimGeometry:
    width: int = 0
    height: int = 0
    sample: int = 0
    framemode: int = 0
    bigbuf: int = 0
    rawenable: int = 0
    rawsamples: int = 0
    rawlines: int = 0


@dataclass
class FetchReply:
    blocks: int
    payload: np.ndarray | None = None  # bytes to send (a part of a buffer)
    wire: np.ndarray | None = None  # or a whole prebuilt buffer (headers set at send)


class ArchonState:
    """Everything the controller remembers; all methods are thread-safe."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.config: dict[int, tuple[str, str]] = {}
        self.params: dict[str, str] = {}  # upper-case name -> value in the timing core
        self.pending = False  # an integrated frame waits for a readout
        self.held = threading.Event()  # HOLDTIMING: the timing core makes no progress
        self._abort = threading.Event()  # the abort parameter is non-zero
        self.power = 1  # not configured
        self.geom = SimGeometry()
        self.buffers: list[SimBuffer] = []
        self.framecount = 0
        self.wbuf = 0
        self.locked = 0
        self.fetchlog: collections.deque[str] = collections.deque(maxlen=64)
        self.faults: set[str] = set()
        self.t0 = time.monotonic_ns()
        self.count = 0
        self._exposing = threading.Event()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._prebuilt: tuple | None = None
        self._next: tuple | None = None
        self.fetch_lock = threading.Lock()  # one send of a prebuilt buffer at a time
        self._set_buffers(0)

    # -- helpers -----------------------------------------------------------
    def ticks(self) -> int:
        return (time.monotonic_ns() - self.t0) // 10

    def _log(self, text: str) -> None:
        self.fetchlog.append(text)

    def _set_buffers(self, bigbuf: int) -> None:
        bases = (0xA0000000, 0xD0000000) if bigbuf == 1 else (0xA0000000, 0xC0000000, 0xE0000000)
        self.buffers = [SimBuffer(i + 1, base=b) for i, b in enumerate(bases)]
        self.wbuf = 1

    def _values(self) -> dict[str, str]:
        return {k: v for k, v in self.config.values()}

    def _apply_geometry(self) -> None:
        v = self._values()

        def num(key: str, default: int = 0) -> int:
            try:
                return int(v.get(key, default))
            except ValueError:
                return default

        g = SimGeometry(
            sample=num("SAMPLEMODE"),
            framemode=num("FRAMEMODE"),
            bigbuf=num("BIGBUF"),
            rawenable=num("RAWENABLE"),
            rawsamples=num("RAWSAMPLES"),
            rawlines=num("RAWENDLINE") + 1 if "RAWENDLINE" in v else 0,
        )
        pixelcount, linecount, taps = num("PIXELCOUNT"), num("LINECOUNT"), num("TAPLINES", 1)
        if g.framemode == 2:
            g.width, g.height = pixelcount * max(taps, 2) // 2, linecount * 2
        else:
            g.width, g.height = pixelcount * max(taps, 1), linecount
        if g.bigbuf != self.geom.bigbuf or not self.buffers:
            self._set_buffers(g.bigbuf)
        self.geom = g

    def _load_params(self) -> None:
        for k, val in self.config.values():
            entry = A.param_entry(k, val)
            if entry is not None:
                self.params[entry[0].upper()] = entry[1]

    def _param_names(self) -> set[str]:
        """Parameter names in upper case: clients may spell them in any case."""
        return {
            entry[0].upper()
            for k, val in self.config.values()
            if (entry := A.param_entry(k, val)) is not None
        }

    # -- commands ----------------------------------------------------------
    def handle(self, text: str) -> str | FetchReply | bool | None:
        """Reply text, a FetchReply, False for an error reply, None for no reply."""
        with self.lock:
            self.count += 1
            if "NOREPLY" in self.faults and not text.upper().startswith("SIM"):
                self.faults.discard("NOREPLY")
                return None
            return self._dispatch(text)

    def _dispatch(self, text: str):  # one flat command table
        word = text.split(" ", 1)[0]
        if text == "SYSTEM":
            return self._system()
        if text == "STATUS":
            return self._status()
        if text == "FRAME":
            return A.format_frame(self._frame())
        if text == "TIMER":
            return f"TIMER={A.timer_text(self.ticks())}"
        if text == "FETCHLOG":
            return self.fetchlog.popleft() if self.fetchlog else "(null)"
        if text.startswith("WCONFIG"):
            w = A.parse_wconfig(text)
            if w is None:
                return False
            line, k, v = w
            self.config[line] = (k, v)
            return ""
        if text.startswith("RCONFIG"):
            line = A.parse_rconfig(text)
            if line is None:
                return False
            if line not in self.config:
                return ""  # an unused line reads back empty, as on the hardware
            k, v = self.config[line]
            return f"{k}={v}"
        if text == "CLEARCONFIG":
            self.config.clear()
            return ""
        if text in ("POLLOFF", "POLLON", "APPLYSYSTEM", "RESETTIMING"):
            return ""
        if text == "HOLDTIMING":
            self.held.set()
            return ""
        if text == "RELEASETIMING":
            self.held.clear()
            self._maybe_read_pending()
            return ""
        if text == "APPLYALL":
            self._apply_geometry()
            self._load_params()
            self.power = 2
            self._log("APPLYALL: configuration applied, power off")
            return ""
        if text == "APPLYCDS":
            self._apply_geometry()
            return ""
        if text == "LOADTIMING":
            self._apply_geometry()
            self._load_params()
            return ""
        if text == "LOADPARAMS":
            self._load_params()
            return ""
        if text.startswith(("APPLYMOD", "APPLYDIO")):
            if A.parse_module_suffix(text[8:]) is None:
                self._log(f"{text[:8]}: bad module number")
                return False
            return ""
        if text == "POWERON":
            if not self.config:
                self._log("POWERON: no configuration")
                return False
            self.power = 4
            return ""
        if text == "POWEROFF":
            self.power = 2
            return ""
        if word in ("PREPPARAM", "FASTPREPPARAM", "LOADPARAM", "FASTLOADPARAM"):
            return self._param_command(word, text)
        if text.startswith("LOCK"):
            if not (text[4:].isdigit() and len(text) == 5) or int(text[4:]) > len(self.buffers):
                return False
            n = int(text[4:])
            self.locked = n
            if n == 0:
                self._start_prebuild()
            return ""
        if text.startswith("FETCH"):
            return self._fetch(text)
        if text == "PING":
            return ""
        if word == "SIMFAULT":
            arg = text[9:].strip().upper()
            if arg == "NONE":
                self.faults.clear()
                self._log("faults cleared")
                return ""
            if arg not in FAULTS:
                return False
            self.faults.add(arg)
            return ""
        if text == "SIMTRIGGER":
            return self._trigger()
        return None  # unknown: the real controller stays silent

    def _param_command(self, word: str, text: str):
        parts = text.split()
        if len(parts) != 3:
            return False
        given, value = parts[1], parts[2]
        name = given.upper()
        if name not in self._param_names():
            self._log(f"{word}: unknown parameter {given}")
            return False
        try:
            int(value, 0)
        except ValueError:
            self._log(f"{word}: parameter value must be an integer: {value}")
            return False
        if word in ("PREPPARAM", "FASTPREPPARAM"):
            return ""
        self.params[name] = value
        s = self.settings
        if name == s.expose_param.upper():
            if int(value, 0) > 0:
                self._start_exposures()
            else:
                self._cancel.set()  # the timing script stops integrating (abort)
        elif s.abort_param and name == s.abort_param.upper():
            if int(value, 0):
                self._abort.set()  # integration ends now; readout as the readout parameter says
            else:
                self._abort.clear()
        elif s.readout_param and name == s.readout_param.upper():
            self._maybe_read_pending()
        return ""

    def _readout_wanted(self) -> bool:
        s = self.settings
        return not s.readout_param or self._param_int(s.readout_param) != 0

    def _maybe_read_pending(self) -> None:
        """Read out a pending frame once allowed (readout parameter set, timing released)."""
        if (
            self.pending
            and not self.held.is_set()
            and self._readout_wanted()
            and self._thread is None
            and self._param_int(self.settings.expose_param) <= 0
        ):
            self.pending = False
            self._start_exposures("readout")

    def _exptime_s(self) -> float:
        s = self.settings
        unit = s.exptime_unit_ms / 1000.0
        if self._param_int("longexposure"):
            unit = 1.0  # camerad's ACF convention: exptime in seconds
        return max(0, self._param_int(s.exptime_param)) * unit

    # -- exposures ---------------------------------------------------------
    def _start_exposures(self, trig: str | None = None) -> None:
        """Start the exposure thread (called with the lock held).

        A running thread re-reads the parameter before each frame, so a new
        request while it runs is never lost; it clears ``_thread`` under the
        lock in the same step in which it decides to end.
        """
        if self._thread is not None:
            return
        self._cancel.clear()
        self._thread = threading.Thread(
            target=self._expose_loop, args=(trig,), name="archonsim-expose", daemon=True
        )
        self._thread.start()

    def _trigger(self):
        s = self.settings
        if self._param_int(s.trigin_expose_param) > 0:
            self._start_exposures(s.trigin_expose_param)
        elif self._param_int(s.trigin_readout_param) > 0:
            self._start_exposures("readout")
        return ""

    def _param_int(self, name: str) -> int:
        try:
            return int(self.params.get(name.upper(), "0"), 0)
        except ValueError:
            return 0

    def _expose_loop(self, trig: str | None) -> None:
        me = threading.current_thread()
        try:
            while not self._stop.is_set():
                if not self._hold_wait():
                    return
                with self.lock:
                    name = trig if trig not in (None, "readout") else self.settings.expose_param
                    if trig == "readout":
                        exptime_s = 0.0
                    else:
                        n = self._param_int(name)
                        if n <= 0:
                            self._thread = None
                            return
                        self.params[name.upper()] = str(n - 1)
                        exptime_s = self._exptime_s()
                        self.pending = False
                if exptime_s and self._wait(exptime_s):
                    with self.lock:
                        self._cancel.clear()  # cancelled: look at the parameter again
                    continue
                if trig is None:
                    with self.lock:
                        if not self._readout_wanted():
                            self.pending = True
                            self._log("integration done; readout pending")
                            continue
                self._readout()
                if trig is not None:
                    with self.lock:
                        self._thread = None
                    return  # one frame per TRIGIN pulse
        finally:
            with self.lock:
                if self._thread is me:
                    self._thread = None

    def _hold_wait(self) -> bool:
        """Wait while the timing core is held; False when stopped."""
        while self.held.is_set():
            if self._stop.wait(0.01):
                return False
        return not self._stop.is_set()

    def _wait(self, seconds: float) -> bool:
        """Integrate (time passes only while not held); True when stopped or cancelled.

        A non-zero abort parameter ends the integration early (False: go on).
        """
        left = seconds
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.held.is_set():
                left -= now - last
            last = now
            if left <= 0:
                return False
            if self._abort.is_set():
                with self.lock:
                    self._log("integration ended by the abort parameter")
                return False
            if self._stop.wait(min(left, 0.02)) or self._cancel.is_set():
                with self.lock:
                    self._log("exposure cancelled")
                return True

    def _readout(self) -> None:
        with self.lock:
            g = self.geom
            idx = self.wbuf
            for _ in range(len(self.buffers)):
                idx = idx % len(self.buffers) + 1
                if idx != self.locked:
                    break
            buf = self.buffers[idx - 1]
            self.wbuf = idx
            buf.complete = 0
            buf.lines = 0
            buf.pixels = 0
            buf.width, buf.height, buf.sample, buf.mode = g.width, g.height, g.sample, g.framemode
            frame_no = self.framecount + 1
            fault = "NOREADOUT" in self.faults
            self.faults.discard("NOREADOUT")
            duration = 0.9 * self.settings.readout_ms / 1000.0
        wire, rawoffset = self._take_wire(g, frame_no)
        elapsed = 0.0
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.held.is_set():  # no progress while the timing core is held
                elapsed += now - last
            last = now
            with self.lock:
                frac = 1.0 if duration <= 0 else min(1.0, elapsed / duration)
                buf.lines = int(g.height * frac)
                buf.pixels = g.width if buf.lines else 0
            if fault and frac >= 0.5:
                with self.lock:
                    self._log("readout stalled (SIMFAULT NOREADOUT)")
                return
            if frac >= 1.0:
                break
            if self._stop.wait(max(0.001, min(0.02, duration - elapsed))):
                return
        with self.lock:
            buf.wire = wire
            buf.rawoffset = rawoffset if g.rawenable else 0
            self.framecount = frame_no
            buf.frame = frame_no
            buf.timestamp = self.ticks()
            buf.complete = 1
        # the next frame is built once the client has unlocked this one (LOCK0),
        # so that building it does not compete with the client's FETCH
        self._next = (g, frame_no + 1)

    def _start_prebuild(self) -> None:
        nxt, self._next = self._next, None
        if nxt is None:
            return
        t = threading.Thread(
            target=self._prebuild, args=nxt, name="archonsim-prebuild", daemon=True
        )
        t.start()

    def _prebuild(self, g: SimGeometry, frame_no: int) -> None:
        wire = build_wire(g, self.settings.seed, frame_no)
        with self.lock:
            self._prebuilt = (g, self.settings.seed, frame_no, wire)

    def _take_wire(self, g: SimGeometry, frame_no: int) -> tuple[np.ndarray, int]:
        with self.lock:
            pre, self._prebuilt = self._prebuilt, None
        if pre is not None and pre[:3] == (g, self.settings.seed, frame_no):
            return pre[3]
        return build_wire(g, self.settings.seed, frame_no)

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(2.0)

    # -- status replies ----------------------------------------------------
    def _frame(self) -> A.FrameStatus:
        fs = A.FrameStatus(timer=self.ticks(), rbuf=self.locked, wbuf=self.wbuf)
        for b in self.buffers:
            fs.buffers.append(A.BufferStatus(**{f.name: getattr(b, f.name) for f in _BUF_FIELDS}))
        return fs

    def _system(self) -> str:
        sysd = dict(self.settings.system)
        present = 0
        items: dict[str, object] = {
            k: sysd.get(k, "0")
            for k in ("BACKPLANE_TYPE", "BACKPLANE_REV", "BACKPLANE_VERSION", "BACKPLANE_ID")
        }
        mods: dict[str, object] = {}
        for slot in range(1, 13):
            t = sysd.get(f"MOD{slot}_TYPE", "0")
            if t != "0":
                present |= 1 << (slot - 1)
            mods[f"MOD{slot}_TYPE"] = t
            mods[f"MOD{slot}_REV"] = sysd.get(f"MOD{slot}_REV", "0" if t == "0" else "1")
            mods[f"MOD{slot}_VERSION"] = sysd.get(
                f"MOD{slot}_VERSION", "0.0.0" if t == "0" else "1.0.1054"
            )
            mods[f"MOD{slot}_ID"] = sysd.get(f"MOD{slot}_ID", f"{0x1000 + slot:016X}")
        items["MOD_PRESENT"] = f"{present:X}"
        items.update(mods)
        return A.format_kv(items)

    def _status(self) -> str:
        on = self.power == 4
        items: dict[str, object] = {
            "VALID": 1,
            "COUNT": self.count,
            "LOG": len(self.fetchlog),
            "POWER": self.power,
            # the supplies' health, not the on/off state (SIMFAULT POWERBAD)
            "POWERGOOD": 0 if "POWERBAD" in self.faults else 1,
            "OVERHEAT": 0,
            "BACKPLANE_TEMP": "31.250",
        }
        for rail, volts in (("P2V5", 2.5), ("P5V", 5.0), ("P6V", 6.0), ("N6V", -6.0)):
            items[f"{rail}_V"] = f"{volts:.3f}"
            items[f"{rail}_I"] = f"{0.25 if on else 0.05:.3f}"
        for rail, volts in (("P17V", 17.0), ("N17V", -17.0), ("P35V", 35.0), ("N35V", -35.0)):
            items[f"{rail}_V"] = f"{volts if on else 0.0:.3f}"
            items[f"{rail}_I"] = f"{0.02 if on else 0.0:.3f}"
        items["FANTACH"] = 2400
        for slot in range(1, 13):
            t = self.settings.system.get(f"MOD{slot}_TYPE", "0")
            if t == "0":
                continue
            items[f"MOD{slot}/TEMP"] = "35.500"
            if t in ("5", "11"):
                items[f"MOD{slot}/TEMPA"] = "-99.875"
                items[f"MOD{slot}/TEMPB"] = "-100.125"
                items[f"MOD{slot}/TEMPC"] = "21.000"
        return A.format_kv(items)

    def _fetch(self, text: str):
        parsed = A.parse_fetch(text)
        if parsed is None:
            return False
        addr, blocks = parsed
        if blocks > (1 << 22):
            self._log(f"FETCH of {blocks} blocks refused")
            return False
        for b in self.buffers:
            size = 0x20000000 if len(self.buffers) == 3 else 0x30000000
            if b.base <= addr < b.base + size:
                if b.wire is None or b.index != self.locked:
                    self._log(f"FETCH from buffer {b.index} which is not locked or empty")
                off = addr - b.base
                if b.wire is not None and off == 0 and blocks == len(b.wire):
                    return FetchReply(blocks, wire=b.wire)
                src = b.wire[:, A.BLOCK_HEADER :].reshape(-1) if b.wire is not None else None
                if src is None:
                    src = np.empty(0, np.uint8)
                return FetchReply(blocks, payload=src[off : off + blocks * A.BLOCK])
        self._log(f"FETCH address {addr:08X} outside the frame buffers")
        return False


# ---------------------------------------------------------------------------
# TCP server
# ---------------------------------------------------------------------------


class ArchonHandler(LineHandler):
    max_line = A.MAX_ARCHON_LINE

    def setup(self) -> None:
        super().setup()
        # replies go out at once, as the controller's do: a client with many
        # commands in flight must not wait for delayed ACKs (Nagle)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        state: ArchonState = self.server.state
        while True:
            try:
                line = self.reader.read_line()
            except (ConnectionClosed, TimeoutError):
                return
            if isinstance(line, OverlongLine):
                self.server.limiter.log(
                    f"overlong command from {self.peer}",
                    logging.WARNING,
                    "%s: overlong command (%d bytes) ignored",
                    self.peer,
                    line.size,
                )
                continue
            cmd = A.decode_command(line)
            if isinstance(cmd, A.BadInput):
                self.server.limiter.log(
                    f"garbled command from {self.peer}",
                    logging.DEBUG,
                    "%s: %s ignored",
                    self.peer,
                    cmd.reason,
                )
                continue
            reply = state.handle(cmd.text)
            if reply is None:
                log.debug("%s: no reply to %r", self.peer, cmd.text[:60])
                continue
            if reply is False:
                ok = self.send(A.encode_error(cmd.ref))
            elif isinstance(reply, FetchReply):
                ok = self._send_fetch(cmd.ref, reply, state)
            else:
                ok = self.send(A.encode_reply(cmd.ref, reply))
            if not ok:
                return

    def _send_fetch(self, ref: int, reply: FetchReply, state: ArchonState) -> bool:
        with state.lock:
            drop = "FETCHDROP" in state.faults
            short = "FETCHSHORT" in state.faults
            state.faults.discard("FETCHDROP")
            state.faults.discard("FETCHSHORT")
        with state.fetch_lock:
            data = fetch_bytes(ref, reply)
            if not (drop or short):
                return self.send(data)
            half = (reply.blocks // 2) * A.BLOCK_WIRE + A.BLOCK_WIRE // 3
            self.send(data[:half])
        if drop:
            log.info("%s: SIMFAULT FETCHDROP: connection closed mid-FETCH", self.peer)
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        log.info("%s: SIMFAULT FETCHSHORT: FETCH reply cut short", self.peer)
        return True


def fetch_bytes(ref: int, reply: FetchReply) -> memoryview:
    """The wire bytes of a FETCH reply (call with the state's fetch_lock held)."""
    if reply.wire is not None:
        A.set_fetch_headers(reply.wire, ref)
        return memoryview(reply.wire.reshape(-1))
    return memoryview(A.encode_fetch_reply(ref, reply.payload, reply.blocks))


class SimLink:
    """An in-process link from camerad's controller layer to an :class:`ArchonState`.

    It has the methods of :class:`~archonsrv.controller.ArchonClient` and
    passes every command and reply through the wire encoder and decoder of
    :mod:`archonsrv.archon`, without a socket: the camera engine can be
    driven in-process (``Controller(SimLink(state))``).
    """

    def __init__(self, state: ArchonState) -> None:
        self.state = state
        self.lock = threading.RLock()
        self.wanted = False
        self._open = False
        self._ref = 0

    @property
    def is_open(self) -> bool:
        return self._open

    def connect(self, host: str, port: int) -> None:
        with self.lock:
            self._open = self.wanted = True

    def close(self) -> None:
        with self.lock:
            self._open = self.wanted = False

    def abort(self) -> None:
        self.wanted = False

    def _exchange(self, text: str):
        if not self._open:
            if not self.wanted:
                raise ArchonError("not connected to the Archon (use open)")
            self._open = True
        self._ref = (self._ref + 1) & 0xFF
        stream = A.CommandStream()
        stream.feed(A.encode_command(self._ref, text))
        cmd = stream.next_event()
        if not isinstance(cmd, A.ArchonCommand):
            raise ArchonError(f"cannot encode {text[:30]!r}")
        word = text.split(" ")[0][:30]
        reply = self.state.handle(cmd.text)
        if reply is None:
            raise ArchonError(f"no reply from Archon to {word}")
        if reply is False:
            raise ArchonError(f"Archon error reply to {word}")
        return cmd.ref, reply

    def command(self, text: str, timeout: float | None = None) -> str:
        with self.lock:
            ref, reply = self._exchange(text)
            if isinstance(reply, FetchReply):
                raise ArchonError("binary reply to a text command")
            stream = A.ReplyStream()
            stream.feed(A.encode_reply(ref, reply))
            return stream.next_event().text

    def fetch(self, address: int, blocks: int, progress=None, sink=None):
        with self.lock:
            ref, reply = self._exchange(A.fetch_command(address, blocks))
            if not isinstance(reply, FetchReply):
                raise ArchonError("FETCH answered with text")
            dec = A.FetchDecoder(ref, blocks)
            with self.state.fetch_lock:
                data = fetch_bytes(ref, reply)
                while not dec.done:
                    chunk = data[dec.received : dec.received + (1 << 20)]
                    if not len(chunk):
                        raise ArchonError(f"FETCH short at block {dec.checked} of {blocks}")
                    dec.writable()[: len(chunk)] = chunk
                    dec.advance(len(chunk))
                    if sink is not None and dec.checked > dec.delivered:
                        sink(dec.take())
            return None if sink is not None else dec.payload()


class ArchonSim(runtime.Service):
    name = "archonsim"

    def __init__(self, args) -> None:
        self.args = args
        self.settings, self.port = load_settings(args)
        self.state = ArchonState(self.settings)
        self.server: ThreadedTCPServer | None = None

    def bind(self):
        self.server = ThreadedTCPServer(
            (self.args.host, self.port), ArchonHandler, name="archonsim", max_connections=8
        )
        self.server.state = self.state
        self.server.limiter = LogLimiter(log)
        return [self.server]

    def start(self) -> None:
        log.info("archonsim listening on %s:%d", self.args.host, self.server.port)
        self.server.start()

    def reload(self):
        settings, port = load_settings(self.args)
        if port != self.port:
            log.warning("port change to %d needs a restart; keeping %d", port, self.port)
        with self.state.lock:
            self.state.settings = settings
        self.settings = settings
        return (
            f"READOUT_TIME={settings.readout_ms} EXPOSE_PARAM={settings.expose_param} "
            f"EXPTIME={settings.exptime_param}x{settings.exptime_unit_ms:g}ms"
        )

    def stop(self) -> int:
        self.state.stop()
        return self.server.stop() if self.server else 0


def read_system_file(path: str) -> dict[str, str]:
    text = read_bounded(path, MAX_CONFIG_BYTES, "system file").decode("ascii", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if "=" in line and not line.startswith(("[", "#", ";")):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    if not out:
        raise ConfigError(f"{path}: no KEY=VALUE lines")
    return out


def _unit_ms(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 3_600_000:
        raise ConfigError(f"{where}: exposure time unit must be a number of ms > 0: {text!r}")
    return v


def load_settings(args) -> tuple[SimSettings, int]:
    s = SimSettings()
    port = DEFAULT_PORT
    cfgfile = args.file or args.config
    system_file = None
    if cfgfile:
        kv = read_keyvalue(cfgfile, CONFIG_MIN_LINE)
        base = Path(cfgfile).resolve().parent
        for key, attr in (
            ("EXPOSE_PARAM", "expose_param"),
            ("TRIGIN_EXPOSE_PARAM", "trigin_expose_param"),
            ("TRIGIN_READOUT_PARAM", "trigin_readout_param"),
            ("EMULATOR_EXPTIME_PARAM", "exptime_param"),
            ("EMULATOR_READOUT_PARAM", "readout_param"),
            ("ABORT_PARAM", "abort_param"),
        ):
            if kv.get(key):
                setattr(s, attr, kv.get(key))
        for key in ("READOUT_TIME", "EMULATOR_PORT", "EMULATOR_SEED"):
            v = kv.get(key)
            if v is None:
                continue
            try:
                n = int(v)
            except ValueError:
                raise ConfigError(f"{cfgfile}: {key} must be a whole number: {v!r}") from None
            if key == "READOUT_TIME":
                s.readout_ms = max(0, n)
            elif key == "EMULATOR_PORT":
                port = n
            else:
                s.seed = n
        if kv.get("EMULATOR_EXPTIME_UNIT"):
            s.exptime_unit_ms = _unit_ms(kv.get("EMULATOR_EXPTIME_UNIT"), cfgfile)
        if kv.get("EMULATOR_SYSTEM"):
            p = Path(kv.get("EMULATOR_SYSTEM"))
            system_file = str(p if p.is_absolute() else base / p)
    if args.port is not None:
        port = args.port
    if args.readout_time is not None:
        s.readout_ms = args.readout_time
    if args.expose_param:
        s.expose_param = args.expose_param
    if args.seed is not None:
        s.seed = args.seed
    for attr in ("exptime_param", "readout_param", "abort_param"):
        if getattr(args, attr):
            setattr(s, attr, getattr(args, attr))
    if args.exptime_unit is not None:
        s.exptime_unit_ms = _unit_ms(args.exptime_unit, "--exptime-unit")
    if args.system:
        system_file = args.system
    if system_file:
        s.system = read_system_file(system_file)
    if not 0 < port < 65536:
        raise ConfigError(f"port out of range: {port}")
    return s, port


def build_parser():
    p = cli.make_parser(
        "archonsim",
        "Simulated STA Archon CCD controller (TCP, Archon command protocol).",
    )
    p.add_argument("config", nargs="?", help="camerad configuration file (EMULATOR_* keys)")
    p.add_argument("-f", dest="file", metavar="FILE", help="configuration file (same as CONFIG)")
    p.add_argument(
        "-p",
        "--port",
        dest="port",
        type=cli.port_number,
        help="TCP port (default EMULATOR_PORT or 4242)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--seed", type=int, help="seed of the synthetic images (default 1)")
    p.add_argument(
        "--readout-time",
        dest="readout_time",
        type=cli.non_negative_int,
        metavar="MS",
        help="readout time in ms (default READOUT_TIME or 500); the readout takes 90 %% of it",
    )
    p.add_argument(
        "--expose-param", dest="expose_param", metavar="NAME", help="exposure parameter name"
    )
    p.add_argument(
        "--exptime-param",
        dest="exptime_param",
        metavar="NAME",
        help="parameter holding the integration time (default EMULATOR_EXPTIME_PARAM or exptime)",
    )
    p.add_argument(
        "--exptime-unit",
        dest="exptime_unit",
        metavar="MS",
        help="milliseconds per unit of that parameter (default EMULATOR_EXPTIME_UNIT or 1)",
    )
    p.add_argument(
        "--readout-param",
        dest="readout_param",
        metavar="NAME",
        help="read out after integrating only while this parameter is non-zero (default: always)",
    )
    p.add_argument(
        "--abort-param",
        dest="abort_param",
        metavar="NAME",
        help="a non-zero value of this parameter ends the integration (default ABORT_PARAM)",
    )
    p.add_argument("--system", metavar="FILE", help=".system file describing the modules")
    cli.add_runtime_args(
        p, cli.RuntimeFlags(daemon=(), kill=(), lockfile=(), logfile=("-l", "--logfile"))
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    # absolute now, so that SIGHUP finds the file whatever the working directory
    args.file = os.path.abspath(args.file) if args.file else args.file
    args.config = os.path.abspath(args.config) if args.config else args.config
    return runtime.serve("archonsim", args, ArchonSim)


if __name__ == "__main__":
    sys.exit(main())

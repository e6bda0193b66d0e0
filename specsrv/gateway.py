"""Gateway mode: motors and counters served by another spec server (real spec
or specsrv).

A motor line of specsrv.conf(5) with ``remote=HOST:NAME`` (or
``HOST:PORT``, and ``remote_mne=MNE`` when the remote mnemonic differs) is
not simulated: specsrv is a client of that server, through the client side
of the protocol (:mod:`specsrv.client`), and

* takes the motor's position, dial position, offset and limits from the
  remote (read at start-up, then kept current by its events);
* moves it by running ``{get_angles;A[mne]=pos;move_em;waitmove;getangles}``
  on the remote and reports ``move_done`` 1 ... 0 and the positions as they
  arrive, so clients of specsrv see the remote motor as a local one;
* sends set / set_dial / set_lm / motor_par / chg_dial to the remote as
  property writes (offset, dial_position, limits, the parameter, search);
* turns ^C (SV_ABORT, ``abort_all``) into ``motor/../abort_all`` on the
  remote.

A counter line with ``remote=`` takes its value from the remote's
``scaler/MNE/value`` events; when specsrv counts, it starts the remote's
count (``scaler/.all./count``) with the same preset and waits for it to end
(^C stops it).

A remote that is not reachable leaves its motors unusable (``unusable`` 1,
moves refused) until it answers; the client reconnects by itself.
"""

from __future__ import annotations

import logging
import threading

from .client import RemoteError, SpecConnection
from .motors import MotionError

log = logging.getLogger("specsrv")

#: seconds a remote move may take before the gateway stops waiting
MOVE_TIMEOUT = 3600.0


#: remote motor properties the gateway follows by events
WATCHED = (
    "dial_position",
    "offset",
    "low_limit",
    "high_limit",
    "high_lim_hit",
    "low_lim_hit",
    "unusable",
)


class RemoteMotor:
    """The link of one local motor to a motor of a remote spec server."""

    def __init__(self, hw, m, link: RemoteLink, rmne: str) -> None:
        self.hw = hw
        self.m = m
        self.link = link
        self.rmne = rmne
        self.error: str | None = None

    def prop(self, what: str) -> str:
        return f"motor/{self.rmne}/{what}"

    # -- from the remote -------------------------------------------------------
    def attach(self) -> bool:
        """Take the motor's state from the remote and watch it; False when the
        remote cannot be reached (the motor is unusable until it can)."""
        m, hw = self.m, self.hw
        conn = self.link.conn
        try:
            values = {
                w: float(conn.prop_get(self.prop(w)))
                for w in ("dial_position", "offset", "sign", "low_limit", "high_limit")
            }
            for what in WATCHED:
                conn.prop_watch(self.prop(what), self._event)
        except (OSError, RemoteError, ValueError, TypeError) as exc:
            log.warning("gateway: motor %s on %s not available: %s", m.mne, self.link.address, exc)
            with hw.changed:
                m.disabled = True
            hw.emit(f"motor/{m.mne}/unusable", 1)
            return False
        with hw.changed:
            m.sign = 1 if values["sign"] >= 0 else -1
            m.dial = values["dial_position"]
            m.offset = values["offset"]
            m.low, m.high = values["low_limit"], values["high_limit"]
            m.disabled = False
            hw.changed.notify_all()
        hw.emit(f"motor/{m.mne}/unusable", 0)
        return True

    def _event(self, value, prop: str, flags: int) -> None:
        what = prop.rsplit("/", 1)[1]
        m, hw = self.m, self.hw
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        with hw.changed:
            if what == "dial_position":
                m.dial = v
                hw.emit(f"motor/{m.mne}/position", m.user)
                hw.emit(f"motor/{m.mne}/dial_position", m.dial)
            elif what == "offset":
                m.offset = v
                hw.emit(f"motor/{m.mne}/offset", m.offset)
                hw.emit(f"motor/{m.mne}/position", m.user)
            elif what in ("low_limit", "high_limit"):
                setattr(m, "low" if what == "low_limit" else "high", v)
                hw.emit(f"motor/{m.mne}/{what}", v)
            elif what in ("high_lim_hit", "low_lim_hit"):
                setattr(m, "high_hit" if what == "high_lim_hit" else "low_hit", int(v))
                hw.emit(f"motor/{m.mne}/{what}", int(v))
            elif what == "unusable":
                m.disabled = bool(v)
                hw.emit(f"motor/{m.mne}/unusable", int(v))
            hw.changed.notify_all()

    # -- to the remote ---------------------------------------------------------
    def start(self, user_target: float) -> None:
        """Start a move (the caller holds hw.lock and marked the motor moving)."""
        cmd = f"{{get_angles;A[{self.rmne}]={user_target!r};move_em;waitmove;getangles}}"
        threading.Thread(
            target=self._move, args=(cmd,), name=f"gateway-{self.m.mne}", daemon=True
        ).start()

    def _move(self, cmd: str) -> None:
        m, hw = self.m, self.hw
        try:
            self.link.conn.remote_eval(cmd, timeout=MOVE_TIMEOUT)
            self.error = None
        except (OSError, RemoteError) as exc:
            self.error = str(exc)
            log.info("gateway: move of %s on %s ended: %s", m.mne, self.link.address, exc)
        try:
            dial = float(self.link.conn.prop_get(self.prop("dial_position")))
        except (OSError, RemoteError, ValueError, TypeError):
            dial = None
        with hw.changed:
            if dial is not None:
                m.dial = dial
            m.remote_moving = False
            hw.emit(f"motor/{m.mne}/position", m.user)
            hw.emit(f"motor/{m.mne}/dial_position", m.dial)
            hw.emit(f"motor/{m.mne}/move_done", 0)
            hw.changed.notify_all()

    def put(self, what: str, value) -> None:
        try:
            self.link.conn.prop_put(self.prop(what), value, check=True)
        except (OSError, RemoteError) as exc:
            raise GatewayError(f"{self.m.mne}: {self.link.address}: {exc}") from None


class RemoteCounter:
    """The link of one local counter to a counter of a remote spec server."""

    def __init__(self, hw, c, link: RemoteLink, rmne: str) -> None:
        self.hw = hw
        self.c = c
        self.link = link
        self.rmne = rmne

    def attach(self) -> bool:
        conn = self.link.conn
        try:
            conn.prop_watch(f"scaler/{self.rmne}/value", self._value)
            conn.prop_watch("scaler/.all./count", self.link.count_event)
        except (OSError, RemoteError) as exc:
            log.warning(
                "gateway: counter %s on %s not available: %s", self.c.mne, self.link.address, exc
            )
            return False
        return True

    def _value(self, value, prop: str, flags: int) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        with self.hw.changed:
            self.c.value = v
            self.hw.emit(f"scaler/{self.c.mne}/value", v)
            self.hw.changed.notify_all()


class GatewayError(MotionError):
    """A remote refused or could not be reached (a spec error for the command)."""


class RemoteLink:
    """One connection to a remote spec server, shared by its motors."""

    def __init__(self, address: str, recorder=None) -> None:
        self.address = address
        self.conn = SpecConnection(address, timeout=5.0)
        self.closed = threading.Event()
        #: the remote is counting for us (set when we start it, cleared by its event)
        self.counting = False
        self.hw = None
        if recorder is not None:
            self.conn.recorder = lambda d, pkt: recorder.record(d, "gateway", address, pkt)

    def retry(self, motors: list) -> None:
        """Attach ``motors`` once the remote answers (in the background)."""

        def loop() -> None:
            delay = 0.2
            pending = list(motors)
            while pending and not self.closed.wait(delay):
                pending = [rm for rm in pending if not rm.attach()]
                delay = min(delay * 2, 5.0)

        threading.Thread(target=loop, name=f"gateway-{self.address}", daemon=True).start()

    def count_event(self, value, prop: str, flags: int) -> None:
        try:
            on = bool(float(value))
        except (TypeError, ValueError):
            return
        if not on and self.hw is not None:
            with self.hw.changed:
                self.counting = False
                self.hw.changed.notify_all()

    def start_count(self, preset: float) -> None:
        try:
            self.conn.prop_put("scaler/.all./count", repr(float(preset)), check=True)
        except (OSError, RemoteError) as exc:
            log.warning("gateway: counting on %s: %s", self.address, exc)
            with self.hw.changed:
                self.counting = False
                self.hw.changed.notify_all()

    def stop_count(self) -> None:
        try:
            self.conn.prop_put("scaler/.all./count", 0)
        except (OSError, RemoteError) as exc:
            log.info("gateway: stopping the count on %s: %s", self.address, exc)
        with self.hw.changed:
            self.counting = False
            self.hw.changed.notify_all()

    def abort(self) -> None:
        try:
            self.conn.prop_put("motor/../abort_all", 1)
        except (OSError, RemoteError) as exc:
            log.info("gateway: abort on %s: %s", self.address, exc)

    def close(self) -> None:
        self.closed.set()
        self.conn.close()


class Gateway:
    """Links the motors configured with ``remote=`` to their servers."""

    def __init__(self, hw, recorder=None) -> None:
        self.hw = hw
        self.links: dict[str, RemoteLink] = {}
        for m in hw.motors:
            addr = m.cfg.remote
            if not addr:
                continue
            link = self.links.get(addr)
            if link is None:
                link = self.links[addr] = RemoteLink(addr, recorder)
            m.remote = RemoteMotor(hw, m, link, m.cfg.remote_mne or m.mne)
        for c in hw.counters:
            addr = c.cfg.remote
            if not addr:
                continue
            link = self.links.get(addr)
            if link is None:
                link = self.links[addr] = RemoteLink(addr, recorder)
            c.remote = RemoteCounter(hw, c, link, c.cfg.remote_mne or c.mne)
            hw.count_links.add(link)
        for link in self.links.values():
            link.hw = hw

    def start(self) -> None:
        failed: dict[RemoteLink, list[RemoteMotor]] = {}
        remotes = [m.remote for m in self.hw.motors if m.remote is not None]
        remotes += [c.remote for c in self.hw.counters if c.remote is not None]
        for r in remotes:
            if not r.attach():
                failed.setdefault(r.link, []).append(r)
        for link, motors in failed.items():
            link.retry(motors)
        if self.links:
            log.info(
                "gateway: %d motor(s) served by %s",
                sum(1 for m in self.hw.motors if m.remote is not None),
                ", ".join(self.links),
            )

    def abort(self) -> None:
        for link in self.links.values():
            link.abort()

    def stop(self) -> None:
        for link in self.links.values():
            link.close()

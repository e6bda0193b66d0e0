"""The in-process model of the instrument: motors and counters behind the spec server.

This is not a simulator program; it is the engine's model of the hardware.

Motors keep a dial position (quantised to steps), a user offset and sign,
dial limits, rates and backlash.  A move is one or two trapezoidal legs
(overshoot by the backlash, then the final approach) computed from base
rate, slew rate and acceleration time; while it runs, the tick thread
reports ``position``/``dial_position`` events, and ``move_done`` 1/0 at the
start and the end.  Hardware limit switches (``low_switch``/``high_switch``)
stop a motor with a limit-hit event.  Counters count with fixed rates to a
preset time (positive) or monitor count (negative).

The configuration file (``specsrv.conf(5)``) has one ``motor`` or
``counter`` line per channel with ``key=value`` words.  Events leave through
the ``emit(property, value, flags=0)`` callable given to :class:`Instrument`.
"""

from __future__ import annotations

import math
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError

#: spec's standard and optional motor parameters (motor_par names)
STANDARD_PARAMS = ("base_rate", "slew_rate", "acceleration", "backlash")
OPTIONAL_PARAMS = (
    "home_base_rate",
    "home_slew_rate",
    "home_acceleration",
    "encoder_step_size",
    "dc_dead_band",
    "dc_settle_time",
    "dc_proportional_gain",
    "dc_derivative_gain",
    "dc_integral_gain",
    "dc_integration_limit",
    "dc_following_error",
    "dc_sampling_interval",
    "dc_veloc_feedforward",
    "dc_accel_feedforward",
    "step_mode",
    "disable_limit_checks",
    "slop",
    "read_mode",
    "deceleration",
    "torque",
    "misc_par_1",
    "misc_par_2",
    "misc_par_3",
    "misc_par_4",
    "misc_par_5",
    "misc_par_6",
    "powder_base",
    "powder_slew",
    "powder_acceleration",
)
MOTOR_PARAMS = STANDARD_PARAMS + OPTIONAL_PARAMS

_MOTOR_KEYS = {
    "name": str,
    "steps": float,
    "sign": int,
    "offset": float,
    "position": float,
    "low": float,
    "high": float,
    "base": float,
    "slew": float,
    "accel": float,
    "backlash": float,
    "home": float,
    "low_switch": float,
    "high_switch": float,
    "disabled": int,
    "remote": str,
    "remote_mne": str,
}
_COUNTER_KEYS = {
    "name": str,
    "type": str,
    "rate": float,
    "scale": float,
    "remote": str,
    "remote_mne": str,
}
COUNTER_KINDS = ("timer", "monitor", "detector")
MAX_CHANNELS = 256


@dataclass
class MotorConfig:
    mne: str
    name: str = ""
    steps: float = 1000.0
    sign: int = 1
    offset: float = 0.0
    position: float = 0.0  # initial dial position
    low: float = -1e9
    high: float = 1e9
    base: float = 500.0
    slew: float = 5000.0
    accel: float = 100.0  # ms
    backlash: float = 0.0  # steps
    home: float = 0.0
    low_switch: float | None = None
    high_switch: float | None = None
    disabled: int = 0
    #: gateway mode: HOST:NAME or HOST:PORT of the spec server that has this motor
    remote: str = ""
    remote_mne: str = ""
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class CounterConfig:
    mne: str
    name: str = ""
    type: str = "detector"
    rate: float = 1000.0
    scale: float = 1.0
    #: gateway mode: HOST:NAME or HOST:PORT of the spec server that has this counter
    remote: str = ""
    remote_mne: str = ""


@dataclass
class InstrumentConfig:
    motors: list[MotorConfig] = field(default_factory=list)
    counters: list[CounterConfig] = field(default_factory=list)


def _valid_mne(word: str) -> bool:
    return bool(word) and (word[0].isalpha() or word[0] == "_") and word.replace("_", "a").isalnum()


def parse_config(text: str, source: str = "<string>") -> InstrumentConfig:
    """Parse a motor/counter configuration; ConfigError names file and line."""
    cfg = InstrumentConfig()
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not words:
            continue
        kind = words[0]
        if kind not in ("motor", "counter"):
            raise ConfigError(f"{where}: expected 'motor' or 'counter', got {kind!r}")
        if len(words) < 2 or not _valid_mne(words[1]) or len(words[1]) > 32:
            raise ConfigError(f"{where}: {kind} needs a mnemonic (letters, digits, _)")
        mne = words[1]
        if mne in seen:
            raise ConfigError(f"{where}: mnemonic {mne!r} used twice")
        seen.add(mne)
        values: dict = {}
        params: dict[str, float] = {}
        keys = _MOTOR_KEYS if kind == "motor" else _COUNTER_KEYS
        for w in words[2:]:
            if "=" not in w:
                raise ConfigError(f"{where}: expected key=value, got {w!r}")
            k, v = w.split("=", 1)
            if kind == "motor" and k in OPTIONAL_PARAMS:
                conv = float
            elif k in keys:
                conv = keys[k]
            else:
                raise ConfigError(f"{where}: unknown {kind} key {k!r}")
            try:
                val = conv(v)
            except ValueError:
                raise ConfigError(f"{where}: bad value for {k}: {v!r}") from None
            if conv is float and math.isnan(val):
                raise ConfigError(f"{where}: bad value for {k}: {v!r}")
            if kind == "motor" and k in OPTIONAL_PARAMS:
                params[k] = val
            else:
                values[k] = val
        if kind == "motor":
            m = MotorConfig(mne=mne, params=params, **values)
            if m.steps == 0 or not math.isfinite(m.steps):
                raise ConfigError(f"{where}: steps must be non-zero")
            if m.sign not in (1, -1):
                raise ConfigError(f"{where}: sign must be 1 or -1")
            if m.low > m.high:
                raise ConfigError(f"{where}: low limit above high limit")
            if m.slew <= 0 or m.base < 0 or m.accel < 0:
                raise ConfigError(f"{where}: rates must be positive")
            m.name = m.name or mne
            cfg.motors.append(m)
        else:
            c = CounterConfig(mne=mne, **values)
            if not (0 <= c.rate < math.inf) or not math.isfinite(c.scale):
                raise ConfigError(f"{where}: counter rate must be a finite number >= 0")
            if c.type not in COUNTER_KINDS:
                raise ConfigError(
                    f"{where}: counter type must be one of {', '.join(COUNTER_KINDS)}"
                )
            c.name = c.name or mne
            cfg.counters.append(c)
        if len(cfg.motors) > MAX_CHANNELS or len(cfg.counters) > MAX_CHANNELS:
            raise ConfigError(f"{where}: more than {MAX_CHANNELS} channels")
    return cfg


def read_config(path: str | Path) -> InstrumentConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    return parse_config(text, str(p))


DEFAULT_CONFIG = Path(__file__).parent / "data" / "specsrv.conf"


# -- motion ---------------------------------------------------------------


class Profile:
    """Trapezoidal move from ``start`` to ``end`` (units), speeds in units/s."""

    def __init__(self, start: float, end: float, v_base: float, v_slew: float, t_acc: float):
        self.start, self.end = start, end
        dist = abs(end - start)
        self.dir = 1.0 if end >= start else -1.0
        v_slew = max(v_slew, 1e-12)
        v_base = min(max(v_base, 0.0), v_slew)
        if t_acc <= 0 or v_slew <= v_base:
            self.acc = math.inf
            self.v0, self.vp, self.ta, self.tc = v_slew, v_slew, 0.0, dist / v_slew
            self.total = self.tc
            return
        a = (v_slew - v_base) / t_acc
        d_acc = (v_base + v_slew) / 2 * t_acc
        if 2 * d_acc <= dist:
            vp, ta = v_slew, t_acc
        else:
            vp = math.sqrt(v_base * v_base + a * dist)
            ta = (vp - v_base) / a
            d_acc = (v_base + vp) / 2 * ta
        self.acc, self.v0, self.vp, self.ta = a, v_base, vp, ta
        self.tc = (dist - 2 * d_acc) / vp if vp > 0 else 0.0
        self.total = 2 * ta + max(self.tc, 0.0)

    def at(self, t: float) -> float:
        if t >= self.total:
            return self.end
        if t <= 0:
            return self.start
        if self.acc == math.inf:
            s = self.vp * t
        elif t < self.ta:
            s = self.v0 * t + 0.5 * self.acc * t * t
        elif t < self.ta + self.tc:
            s = (self.v0 + self.vp) / 2 * self.ta + self.vp * (t - self.ta)
        else:
            d_acc = (self.v0 + self.vp) / 2 * self.ta
            td = t - self.ta - self.tc
            s = d_acc + self.vp * self.tc + self.vp * td - 0.5 * self.acc * td * td
        return self.start + self.dir * s


class MotionError(Exception):
    """A move that cannot be started (limits, disabled motor)."""


class Motor:
    def __init__(self, cfg: MotorConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.mne = cfg.mne
        self.name = cfg.name
        self.steps = cfg.steps
        self.sign = cfg.sign
        self.dial = self.quantise(cfg.position)
        self.offset = cfg.offset
        self.low = cfg.low  # dial limits
        self.high = cfg.high
        self.params: dict[str, float] = {
            "base_rate": cfg.base,
            "slew_rate": cfg.slew,
            "acceleration": cfg.accel,
            "backlash": cfg.backlash,
            **cfg.params,
        }
        self.disabled = bool(cfg.disabled)
        self.low_hit = 0
        self.high_hit = 0
        self.emergency_stop = 0
        self.motor_fault = 0
        self.slip = 0.0  # controller position minus spec's (simulated discrepancy)
        self.legs: list[float] = []
        self.profile: Profile | None = None
        self.t0 = 0.0
        #: gateway mode: the link to the remote motor (gateway.RemoteMotor)
        self.remote = None
        self.remote_moving = False

    def quantise(self, dial: float) -> float:
        return round(dial * self.steps) / self.steps

    @property
    def user(self) -> float:
        return self.sign * self.dial + self.offset

    def user_of(self, dial: float) -> float:
        return self.sign * dial + self.offset

    def dial_of(self, user: float) -> float:
        return (user - self.offset) * self.sign

    @property
    def moving(self) -> bool:
        return self.profile is not None or self.remote_moving

    def user_limits(self) -> tuple[float, float]:
        a, b = self.user_of(self.low), self.user_of(self.high)
        return (a, b) if a <= b else (b, a)

    def _leg(self, start: float, end: float, now: float) -> None:
        p = self.params
        steps = abs(self.steps)
        self.profile = Profile(
            start, end, p["base_rate"] / steps, p["slew_rate"] / steps, p["acceleration"] / 1000
        )
        self.t0 = now


class Counter:
    def __init__(self, cfg: CounterConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.mne = cfg.mne
        self.name = cfg.name
        self.kind = cfg.type
        self.rate = cfg.rate
        self.value = 0.0
        #: gateway mode: the link to the remote counter (gateway.RemoteCounter)
        self.remote = None

    def value_at(self, elapsed: float) -> float:
        if self.kind == "timer":
            return round(elapsed * self.cfg.scale, 6)
        return float(math.floor(self.rate * elapsed))


class Instrument:
    """All motors and counters, and the thread that moves and counts them."""

    def __init__(self, cfg: InstrumentConfig, emit, *, update: float = 0.05, mode: int = 1) -> None:
        self.emit = emit
        self.update = update
        self.mode = mode
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.motors: list[Motor] = [Motor(m, i) for i, m in enumerate(cfg.motors)]
        self.counters: list[Counter] = [Counter(c, i) for i, c in enumerate(cfg.counters)]
        self.by_mne = {m.mne: m for m in self.motors}
        self.cnt_by_mne = {c.mne: c for c in self.counters}
        self.counting = False
        self.count_preset = 0.0
        self.count_t0 = 0.0
        self.count_elapsed = 0.0
        self._last_value_event = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: called (from the tick thread) when a limit is hit in -S2 mode
        self.on_limit_abort = None
        self.sync_answer: int | None = None
        #: gateway mode: links of remote counters (gateway.RemoteLink)
        self.count_links: set = set()

    # -- thread -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hardware", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.changed:
            self.changed.notify_all()
        if self._thread is not None:
            self._thread.join(2)

    def _busy(self) -> bool:
        return self.counting or any(m.moving for m in self.motors)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            with self.changed:
                if not self._busy():
                    self.changed.wait(0.5)
                    next_tick = time.monotonic()
                    continue
                now = time.monotonic()
                self._tick(now)
                self.changed.notify_all()
            # fixed rate: the time the tick took does not stretch the interval
            next_tick = max(next_tick + self.update, now)
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def _tick(self, now: float) -> None:
        limit_hit = False
        for m in self.motors:
            if m.profile is None:
                continue
            t = now - m.t0
            pos = m.quantise(m.profile.at(t))
            hit = self._switch_crossed(m, m.profile.start, pos)
            if hit:
                limit_hit = True
                continue
            if t >= m.profile.total:
                pos = m.profile.end
                if m.legs:
                    m.dial = pos
                    m._leg(pos, m.legs.pop(0), now)
                    self._emit_position(m)
                    continue
                m.dial = pos
                m.profile = None
                self._emit_position(m)
                self.emit(f"motor/{m.mne}/move_done", 0)
            elif pos != m.dial:
                m.dial = pos
                self._emit_position(m)
        if limit_hit and self.mode == 2:
            for m in self.motors:
                if m.moving:
                    self._halt(m)
            if self.on_limit_abort:
                self.on_limit_abort()
        if self.counting:
            self._count_tick(now)

    def _switch_crossed(self, m: Motor, start: float, pos: float) -> bool:
        hs, ls = m.cfg.high_switch, m.cfg.low_switch
        if hs is not None and pos >= hs and start < hs:
            m.dial = m.quantise(hs)
            m.high_hit = 1
            self.emit(f"motor/{m.mne}/high_lim_hit", 1)
            self._halt(m)
            return True
        if ls is not None and pos <= ls and start > ls:
            m.dial = m.quantise(ls)
            m.low_hit = 1
            self.emit(f"motor/{m.mne}/low_lim_hit", 1)
            self._halt(m)
            return True
        return False

    def set_fault(self, mne: str, kind: str, on: bool) -> None:
        """Simulate an emergency stop or motor fault: the motor stops as at a
        limit (in -S2 mode the others and the command too); moves are refused
        while it lasts."""
        with self.changed:
            m = self.motor(mne)
            setattr(m, kind, 1 if on else 0)
            self.emit(f"motor/{m.mne}/{kind}", 1 if on else 0)
            if on and m.moving:
                self._halt(m)
                if self.mode == 2:
                    for other in self.motors:
                        if other.moving:
                            self._halt(other)
                    if self.on_limit_abort:
                        self.on_limit_abort()
            self.changed.notify_all()

    def _halt(self, m: Motor) -> None:
        m.profile = None
        m.legs = []
        self._emit_position(m)
        self.emit(f"motor/{m.mne}/move_done", 0)

    def _emit_position(self, m: Motor) -> None:
        self.emit(f"motor/{m.mne}/position", m.user)
        self.emit(f"motor/{m.mne}/dial_position", m.dial)

    # -- motors -------------------------------------------------------------
    def motor(self, mne: str) -> Motor:
        m = self.by_mne.get(mne)
        if m is None:
            raise KeyError(mne)
        return m

    def check_move(self, m: Motor, user_target: float) -> float:
        """Dial target of a move to ``user_target`` or MotionError."""
        if m.disabled:
            raise MotionError(f"Motor '{m.mne}' is unusable.")
        if m.emergency_stop or m.motor_fault:
            what = "emergency stop" if m.emergency_stop else "motor fault"
            raise MotionError(f"Motor '{m.mne}' has an active {what}.")
        dial = m.quantise(m.dial_of(user_target))
        if not m.params.get("disable_limit_checks"):
            if dial > m.high + 1e-9:
                raise MotionError(
                    f"{m.mne} will hit {'high' if m.sign > 0 else 'low'} limit at "
                    f"{m.user_of(m.high):.15g}."
                )
            if dial < m.low - 1e-9:
                raise MotionError(
                    f"{m.mne} will hit {'low' if m.sign > 0 else 'high'} limit at "
                    f"{m.user_of(m.low):.15g}."
                )
        return dial

    def start_moves(self, targets: dict[str, float]) -> list[str]:
        """Start motors (user targets); all are checked first.  Returns those started."""
        with self.changed:
            plan = []
            for mne, user in targets.items():
                m = self.motor(mne)
                if m.moving:
                    raise MotionError(f"Motor '{mne}' is already moving.")
                plan.append((m, self.check_move(m, user), user))
            now = time.monotonic()
            started = []
            for m, dial, user in plan:
                if dial == m.dial:
                    continue
                m.low_hit = m.high_hit = 0
                if m.remote is not None:
                    m.remote_moving = True
                    m.remote.start(user)
                    started.append(m.mne)
                    self.emit(f"motor/{m.mne}/move_done", 1)
                    continue
                backlash = m.params.get("backlash", 0.0) / abs(m.steps)
                legs = [dial]
                if backlash and (dial - m.dial) * backlash < 0:
                    legs = [dial - backlash, dial]
                m.legs = legs[1:]
                m._leg(m.dial, legs[0], now)
                started.append(m.mne)
                self.emit(f"motor/{m.mne}/move_done", 1)
            self.changed.notify_all()
            return started

    def search(self, mne: str, how: str, home_pos: float | None = None) -> None:
        m = self.motor(mne)
        if m.remote is not None:
            extra = f" {home_pos!r}" if home_pos is not None else ""
            m.remote.put("search", f"{how}{extra}")
            return
        if m.disabled:
            raise MotionError(f"Motor '{m.mne}' is unusable.")
        if how.startswith("home"):
            target = m.cfg.home
        elif how == "lim+":
            target = m.cfg.high_switch if m.cfg.high_switch is not None else m.high
        elif how == "lim-":
            target = m.cfg.low_switch if m.cfg.low_switch is not None else m.low
        else:
            raise MotionError(f"chg_dial(): bad search type {how!r}")
        with self.changed:
            m.low_hit = m.high_hit = 0
            m.legs = []
            if m.quantise(target) != m.dial:
                m._leg(m.dial, m.quantise(target), time.monotonic())
                self.emit(f"motor/{m.mne}/move_done", 1)
            self.changed.notify_all()
        self.wait_motors(lambda: False)
        if home_pos is not None and how.startswith("home"):
            self.set_dial(mne, home_pos)

    def abort(self) -> None:
        links = set()
        with self.changed:
            for m in self.motors:
                if m.remote is not None:
                    if m.remote_moving:
                        links.add(m.remote.link)
                elif m.moving:
                    self._halt(m)
            if self.counting:
                self._finish_count(time.monotonic())
            self.changed.notify_all()
        for link in links:  # outside the lock: a remote's events take it
            link.abort()
        for link in self.count_links:
            if link.counting:
                link.stop_count()

    def any_moving(self) -> bool:
        with self.lock:
            return any(m.moving for m in self.motors)

    def wait_motors(self, aborted, timeout: float | None = None) -> bool:
        """Wait until no motor moves; False if ``aborted()`` became true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while any(m.moving for m in self.motors):
                if aborted():
                    return False
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self.changed.wait(0.05)
        return True

    def set_dial(self, mne: str, dial: float) -> None:
        """New dial position; the offset stays, so the user position follows."""
        m = self.motor(mne)
        if m.remote is not None:  # outside the lock: the remote's events take it
            m.remote.put("dial_position", repr(float(dial)))
            return
        with self.lock:
            m = self.motor(mne)
            m.dial = m.quantise(dial)
            m.slip = 0.0
            self.emit(f"motor/{m.mne}/dial_position", m.dial)
            self.emit(f"motor/{m.mne}/position", m.user)

    def set_user(self, mne: str, user: float) -> None:
        m = self.motor(mne)
        if m.remote is not None:
            m.remote.put("offset", repr(float(user - m.sign * m.dial)))
            return
        with self.lock:
            m = self.motor(mne)
            m.offset = user - m.sign * m.dial
            self.emit(f"motor/{m.mne}/offset", m.offset)
            self.emit(f"motor/{m.mne}/position", m.user)

    def set_limits(self, mne: str, user_a: float, user_b: float) -> None:
        m = self.motor(mne)
        if m.remote is not None:
            lo, hi = sorted((user_a, user_b))
            m.remote.put("limits", f"{lo!r} {hi!r}")
            return
        with self.lock:
            m = self.motor(mne)
            d1, d2 = sorted((m.dial_of(user_a), m.dial_of(user_b)))
            old = m.low, m.high
            m.low, m.high = d1, d2
            if d1 != old[0]:
                self.emit(f"motor/{m.mne}/low_limit", m.low)
            if d2 != old[1]:
                self.emit(f"motor/{m.mne}/high_limit", m.high)

    def set_param(self, mne: str, name: str, value: float) -> None:
        m = self.motor(mne)
        if m.remote is not None and name != "disable":
            m.remote.put(name, repr(float(value)))
            return
        with self.lock:
            m = self.motor(mne)
            if name == "disable":
                m.disabled = bool(value)
                self.emit(f"motor/{m.mne}/unusable", int(m.disabled))
                return
            m.params[name] = float(value)
            self.emit(f"motor/{m.mne}/{name}", float(value))

    def read(self, mne: str) -> float:
        """Controller position (dial) as getangles sees it."""
        with self.lock:
            m = self.motor(mne)
            return m.dial + m.slip

    # -- counters -----------------------------------------------------------
    def start_count(self, preset: float) -> None:
        with self.changed:
            if self.counting:
                raise MotionError("Counters are already counting.")
            self.counting = True
            self.count_preset = preset
            self.count_t0 = time.monotonic()
            self.count_elapsed = 0.0
            self._last_value_event = self.count_t0
            for c in self.counters:
                c.value = 0.0
            links = list(self.count_links)
            for link in links:
                link.counting = True
            self.emit("scaler/.all./count", 1)
            self.changed.notify_all()
        for link in links:  # outside the lock: a remote's events take it
            link.start_count(preset)

    def _monitor(self) -> Counter | None:
        for c in self.counters:
            if c.kind == "monitor":
                return c
        return None

    def _count_tick(self, now: float) -> None:
        elapsed = now - self.count_t0
        preset = self.count_preset
        if preset >= 0:
            done = elapsed >= preset
            if done:
                elapsed = preset
        else:
            mon = self._monitor()
            need = -preset
            if mon is None or mon.rate <= 0:
                done = elapsed >= need  # no monitor: count seconds instead
                elapsed = min(elapsed, need)
            else:
                done = mon.value_at(elapsed) >= need
                if done:
                    elapsed = need / mon.rate
        self.count_elapsed = elapsed
        for c in self.counters:
            if c.remote is None:
                c.value = c.value_at(elapsed)
        if done:
            self._finish_count(now, final=True)
        elif now - self._last_value_event >= 0.1:
            self._last_value_event = now
            for c in self.counters:
                self.emit(f"scaler/{c.mne}/value", c.value)

    def _finish_count(self, now: float, final: bool = False) -> None:
        if not final:
            elapsed = now - self.count_t0
            for c in self.counters:
                if c.remote is None:
                    c.value = c.value_at(elapsed)
        self.counting = False
        for c in self.counters:
            self.emit(f"scaler/{c.mne}/value", c.value)
        self.emit("scaler/.all./count", 0)

    def wait_count(self, aborted) -> bool:
        with self.changed:
            while self.counting or any(link.counting for link in self.count_links):
                if aborted():
                    return False
                self.changed.wait(0.05)
        return True

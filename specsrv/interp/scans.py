"""spec's standard scans and macros, the data file, and what scans publish.

Commands (registered in the one command table, see commands.py):
``ascan``, ``dscan``, ``a2scan``, ``d2scan``, ``mesh``, ``timescan``,
``loopscan``, ``newfile``, ``lscmd``, ``prdef``.

The data file is spec's standard format, which silx ``specfile`` and PyMca
read: a file header (``#F #E #D #C #O #o``) written by ``newfile``, then per
scan ``#S #D #T|#M #P #N #L`` and one line per point.  While a scan runs it
publishes, as spec's standard macros and clients expect:

``SCAN_D``        data array, one row per point (the columns of ``#L``)
``SCAN_D_INFO``   JSON ``[last point index, "running"|"idle", 0]``
``SCAN_D_META``   JSON ``[{column index: label}, {title, scan number, ...}, {}]``
``_SC_NEWSCAN``   scan parameters (a Python literal) at the start, 0 at the end
``_SC_NEWSCANDATA``, ``_SC_NEWPLOTDATA``  each point ({'i': .., 'x': .., mne: value})

and the usual globals ``SCAN_N``, ``DATAFILE``, ``NPTS``, ``COUNT_TIME``.
All paths are confined to the data directory (``Interp.file_path``).
"""

from __future__ import annotations

import fnmatch
import json
import time

import numpy as np

from ..motors import MotionError
from .commands import COMMANDS, command, usage_error
from .values import DataArray, SpecError, to_num, to_str

#: rows of SCAN_D kept for an endless timescan (older rows scroll out)
MAX_SCAN_D_ROWS = 65536
#: points of one scan (an endless timescan counts until ^C)
MAX_POINTS = 10_000_000
#: bytes of an existing data file read to find its last scan number
MAX_SCAN_FILE_READ = 64 << 20


def _fmt(v: float) -> str:
    return f"{v:.8g}"


class ScanFile:
    """The open standard data file (append mode, flushed at every line)."""

    def __init__(self, path: str, shown: str) -> None:
        self.path = path
        self.shown = shown  # the name as the user gave it (for #F)

    def write(self, text: str) -> None:
        if self.path == "/dev/null":
            return
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise SpecError(f'Can\'t write "{self.shown}": {exc.strerror}.') from None


def _motor_header(motors, key: str, tag: str) -> list[str]:
    lines = []
    for i in range(0, len(motors), 8):
        chunk = motors[i : i + 8]
        lines.append(f"#{tag}{i // 8} " + "  ".join(getattr(m, key) for m in chunk))
    return lines


def _scan_file_facts(path: str) -> tuple[int, int]:
    """(last scan number, epoch of #E) of an existing data file."""
    last, epoch = 0, int(time.time())
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SCAN_FILE_READ)
    except OSError:
        return last, epoch
    for line in data.splitlines():
        try:
            if line.startswith(b"#S "):
                last = int(line.split()[1])
            elif line.startswith(b"#E "):
                epoch = int(line.split()[1])
        except (ValueError, IndexError):
            continue
    return last, epoch


@command("newfile", usage="newfile filename [scan_number]")
def _newfile(it, cmd, words) -> None:
    if not words or len(words) > 2:
        raise usage_error(cmd)
    name = to_str(it.eval_word(words[0])) if words[0][0] in "\"'" else words[0]
    path = it.file_path(name)
    shown = name
    exists = path == "/dev/null" or _exists(path)
    sf = ScanFile(path, shown)
    if not exists:
        hw = it.hw
        now = time.time()
        head = [
            f"#F {shown}",
            f"#E {int(now)}",
            f"#D {time.ctime(now)}",
            f"#C {to_str(it.get_var('SPEC'))}  User = {to_str(it.get_var('USER'))}",
            *_motor_header(hw.motors, "name", "O"),
            *_motor_header(hw.motors, "mne", "o"),
        ]
        sf.write("\n".join(head) + "\n")
        n = 0
        epoch = int(now)
    else:
        n, epoch = _scan_file_facts(path) if path != "/dev/null" else (0, int(time.time()))
    if len(words) == 2:
        n = int(to_num(it.eval_word(words[1])))
    it.scan_file = sf
    it.set_var("EPOCH", float(epoch))
    it.set_var("DATAFILE", shown)
    it.set_var("SCAN_N", float(n))
    it.write(f'Using "{shown}".  Next scan is number {n + 1}.\n')


def _exists(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


# -- the scan loop -------------------------------------------------------------------


class Scan:
    """One scan: points of motor positions, counted and recorded."""

    def __init__(self, it, title: str, motors, points, count_time: float, sleep: float = 0.0):
        self.it = it
        self.title = title
        self.motors = motors  # scanned motors (may be empty: timescan)
        self.points = points  # iterable of position tuples (or None for time scans)
        self.count_time = count_time
        self.sleep = sleep
        hw = it.hw
        self.counters = hw.counters
        first = [m.name for m in motors] if motors else ["Time"]
        self.labels = first + ["Epoch"] + [c.name for c in self.counters]
        self.mnes = [m.mne for m in motors] or ["Time"]
        self.t0 = time.time()

    def _publish_start(self, n: int, npts: int) -> None:
        it = self.it
        cols = len(self.labels)
        rows = max(1, min(npts, MAX_SCAN_D_ROWS))
        it.set_global("SCAN_D", DataArray(np.zeros((rows, cols))))
        meta = {
            "title": self.title,
            "scanno": n,
            "npts": npts,
            "count_time": self.count_time,
            "motors": self.mnes,
        }
        it.set_var(
            "SCAN_D_META",
            json.dumps([{str(i): lab for i, lab in enumerate(self.labels)}, meta, {}]),
        )
        it.set_var("SCAN_D_INFO", json.dumps([-1, "running", 0]))
        det = self.counters[-1].mne if self.counters else "?"
        params = {
            "title": self.title,
            "scanno": n,
            "npts": npts,
            "counter": det,
            "motors": self.mnes,
            "columns": self.labels,
            "count_time": self.count_time,
        }
        it.set_var("_SC_NEWSCAN", repr(params))

    def _publish_point(self, i: int, row: list[float]) -> None:
        it = self.it
        da = it.globals.get("SCAN_D")
        if isinstance(da, DataArray):
            a = da.for_write()
            if i >= a.shape[0]:
                a[:-1] = a[1:]  # scroll: keep the newest rows
                a[-1] = row
                ldt = a.shape[0] - 1
            else:
                a[i] = row
                ldt = i
            it.set_var("SCAN_D_INFO", json.dumps([ldt, "running", 0]))
        point = {"i": i, "x": row[0]}
        point.update({m: row[k] for k, m in enumerate(self.mnes)})
        point.update({c.mne: row[len(self.mnes) + 1 + k] for k, c in enumerate(self.counters)})
        text = repr(point)
        it.set_var("_SC_NEWSCANDATA", text)
        it.set_var("_SC_NEWPLOTDATA", text)

    def run(self, npts: int) -> None:
        it = self.it
        hw = it.hw
        n = int(to_num(it.get_var("SCAN_N"))) + 1
        it.set_var("SCAN_N", float(n))
        it.set_var("NPTS", float(npts))
        sf = it.scan_file or ScanFile("/dev/null", "/dev/null")
        now = time.time()
        self.t0 = now
        it.getangles()
        if self.count_time < 0:
            timing = f"#M {_fmt(-self.count_time)}  (Monitor)"
        else:
            timing = f"#T {_fmt(self.count_time)}  (Seconds)"
        positions = []
        for i in range(0, len(hw.motors), 8):
            chunk = hw.motors[i : i + 8]
            positions.append(f"#P{i // 8} " + " ".join(_fmt(m.user) for m in chunk))
        head = [
            "",
            f"#S {n}  {self.title}",
            f"#D {time.ctime(now)}",
            timing,
            *positions,
            f"#N {len(self.labels)}",
            "#L " + "  ".join(self.labels),
        ]
        sf.write("\n".join(head) + "\n")
        total = "" if npts >= MAX_POINTS else f"Total {npts} points, "
        it.write(
            f"\n{total}{_fmt(abs(self.count_time))} "
            f"{'monitor counts' if self.count_time < 0 else 'seconds'}\n\n"
            f"Scan {n:3d}   {time.ctime(now)}   file = {sf.shown}  "
            f"{to_str(it.get_var('SPEC'))}  User = {to_str(it.get_var('USER'))}\n"
            f"{self.title}\n\n"
            "  #  " + "".join(f"{lab[:11]:>12}" for lab in self.labels) + "\n"
        )
        self._publish_start(n, npts)
        done = 0
        try:
            for i, pos in enumerate(self.points):
                if i >= npts:
                    break
                if self.motors:
                    for m, p in zip(self.motors, pos, strict=True):
                        it.set_element("A", str(m.index), p, must_exist=True, notify=False)
                    it.move_em()
                    it.waitmove()
                    it.getangles()
                elif self.sleep > 0 and i:
                    it.sleep(self.sleep)
                it.waitcount()
                try:
                    hw.start_count(self.count_time)
                except MotionError as exc:
                    raise SpecError(str(exc)) from None
                it.waitcount()
                it.getcounts()
                now = time.time()
                epoch = now - to_num(it.get_var("EPOCH"))
                first = [m.user for m in self.motors] if self.motors else [now - self.t0]
                row = first + [epoch] + [c.value for c in self.counters]
                sf.write(" ".join(_fmt(v) for v in row) + "\n")
                it.write(f"{i:4d} " + "".join(f"{_fmt(v):>12}" for v in row) + "\n")
                self._publish_point(i, row)
                done = i + 1
                if self.motors and self.sleep > 0:
                    it.sleep(self.sleep)
        except SpecError:
            sf.write(f"#C {time.ctime()}.  Scan aborted after {done} points.\n")
            raise
        finally:
            ldt = min(done, MAX_SCAN_D_ROWS) - 1
            it.set_var("SCAN_D_INFO", json.dumps([ldt, "idle", 0]))
            it.set_var("_SC_NEWSCAN", 0.0)


def _words_needed(cmd: str, words: list[str], n: int, usage: str) -> None:
    if len(words) < n:
        raise SpecError(f"Usage:  {cmd} {usage}")


def _num(it, word: str) -> float:
    return to_num(it.eval_word(word))


def _intervals(it, word: str) -> int:
    n = _num(it, word)
    if not (1 <= n <= MAX_POINTS - 1) or n != int(n):
        raise SpecError("Number of intervals must be a positive integer.")
    return int(n)


def _line_scan(it, cmd: str, words: list[str], nmot: int, relative: bool) -> None:
    usage = " ".join(["motor start finish"] * nmot) + " intervals time"
    _words_needed(cmd, words, 3 * nmot + 2, usage)
    it.waitmove()
    it.getangles()
    motors, ranges = [], []
    for k in range(nmot):
        m = it.word_motor(words[3 * k])
        s, e = _num(it, words[3 * k + 1]), _num(it, words[3 * k + 2])
        if relative:
            s, e = s + m.user, e + m.user
        motors.append(m)
        ranges.append((s, e))
    n = _intervals(it, words[3 * nmot])
    t = _num(it, words[3 * nmot + 1])
    starts = [m.user for m in motors]
    for m, (s, e) in zip(motors, ranges, strict=True):
        for p in (s, e):  # check both ends before moving anything
            _check_move(it, m, p)
    points = ([s + i * (e - s) / n for s, e in ranges] for i in range(n + 1))
    title = f"{cmd} " + " ".join(words)
    it.set_var("COUNT_TIME", t)
    try:
        Scan(it, title, motors, points, t).run(n + 1)
    finally:
        if relative:
            _return_to(it, motors, starts)


def _check_move(it, m, user: float) -> None:
    try:
        it.hw.check_move(m, user)
    except MotionError as exc:
        raise SpecError(str(exc)) from None


def _return_to(it, motors, starts) -> None:
    it.clear_abort()
    for m, p in zip(motors, starts, strict=True):
        it.set_element("A", str(m.index), p, must_exist=True, notify=False)
    it.move_em()
    it.waitmove()
    it.getangles()


@command("ascan", usage="ascan motor start finish intervals time")
def _ascan(it, cmd, words) -> None:
    _line_scan(it, cmd, words, 1, relative=False)


@command("dscan", "lup", usage="NAME motor start finish intervals time")
def _dscan(it, cmd, words) -> None:
    _line_scan(it, cmd, words, 1, relative=True)


@command("a2scan", usage="a2scan m1 s1 f1 m2 s2 f2 intervals time")
def _a2scan(it, cmd, words) -> None:
    _line_scan(it, cmd, words, 2, relative=False)


@command("d2scan", usage="d2scan m1 s1 f1 m2 s2 f2 intervals time")
def _d2scan(it, cmd, words) -> None:
    _line_scan(it, cmd, words, 2, relative=True)


@command("mesh", usage="mesh m1 s1 f1 n1 m2 s2 f2 n2 time")
def _mesh(it, cmd, words) -> None:
    _words_needed(cmd, words, 9, "m1 s1 f1 intervals1 m2 s2 f2 intervals2 time")
    it.waitmove()
    it.getangles()
    m1, m2 = it.word_motor(words[0]), it.word_motor(words[4])
    s1, e1, n1 = _num(it, words[1]), _num(it, words[2]), _intervals(it, words[3])
    s2, e2, n2 = _num(it, words[5]), _num(it, words[6]), _intervals(it, words[7])
    t = _num(it, words[8])
    if (n1 + 1) * (n2 + 1) > MAX_POINTS:
        raise SpecError("Too many points.")
    for m, a, b in ((m1, s1, e1), (m2, s2, e2)):
        _check_move(it, m, a)
        _check_move(it, m, b)
    points = (
        (s1 + i * (e1 - s1) / n1, s2 + j * (e2 - s2) / n2)
        for j in range(n2 + 1)
        for i in range(n1 + 1)
    )
    it.set_var("COUNT_TIME", t)
    Scan(it, f"{cmd} " + " ".join(words), [m1, m2], points, t).run((n1 + 1) * (n2 + 1))


@command("timescan", usage="timescan count_time [sleep_time]")
def _timescan(it, cmd, words) -> None:
    _words_needed(cmd, words, 1, "count_time [sleep_time]")
    t = _num(it, words[0])
    sleep = _num(it, words[1]) if len(words) > 1 else 0.0
    it.set_var("COUNT_TIME", t)
    Scan(it, f"{cmd} " + " ".join(words), [], iter(lambda: (), None), t, sleep).run(MAX_POINTS)


@command("loopscan", usage="loopscan npts count_time [sleep_time]")
def _loopscan(it, cmd, words) -> None:
    _words_needed(cmd, words, 2, "npts count_time [sleep_time]")
    n = _intervals(it, words[0])
    t = _num(it, words[1])
    sleep = _num(it, words[2]) if len(words) > 2 else 0.0
    it.set_var("COUNT_TIME", t)
    Scan(it, f"{cmd} " + " ".join(words), [], (() for _ in range(n)), t, sleep).run(n)


# -- listing --------------------------------------------------------------------------


def _columns(names: list[str], width: int = 78) -> str:
    if not names:
        return ""
    w = max(len(n) for n in names) + 2
    per = max(1, width // w)
    rows = [names[i : i + per] for i in range(0, len(names), per)]
    return "\n".join("".join(f"{n:<{w}}" for n in row).rstrip() for row in rows) + "\n"


@command("lscmd")
def _lscmd(it, cmd, words) -> None:
    names = sorted(set(COMMANDS) | set(it.functions))
    if words:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, w) for w in words)]
    it.write(_columns(names))


@command("prdef")
def _prdef(it, cmd, words) -> None:
    names = words or sorted(it.macros)
    out = []
    for name in names:
        macro = it.macros.get(name)
        if macro is not None:
            params, body = macro
            args = f"({', '.join(params)})" if params is not None else ""
            out.append(f"def {name}{args} '{body}'\n")
        elif name in COMMANDS or name in it.functions:
            out.append(f'"{name}" is built in.\n')
        else:
            out.append(f'"{name}" is not a macro.\n')
    it.write("".join(out))

"""The state file: motor positions, offsets and limits across restarts.

spec keeps each motor's dial position, offset and limits in its settings
file under the auxiliary directory, so a restarted session (and every client
that reconnects) sees the same instrument; ``-f`` starts fresh.  specsrv
keeps the same in ``STATE_DIR/NAME/settings``, a text file::

    # specsrv state of fourc
    motor tth dial=10.5 offset=0 low=-180 high=180

written atomically (a temporary file renamed over the old one) after each
command that changed it and at exit.  A motor the configuration no longer
has is skipped with a log line; a line that cannot be read is skipped too.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

log = logging.getLogger("specsrv")

#: largest state file read (a few hundred motors fit in far less)
MAX_STATE = 1 << 20
FIELDS = ("dial", "offset", "low", "high")


def snapshot(hw) -> dict[str, dict[str, float]]:
    """The persistent state of every motor."""
    with hw.lock:
        return {
            m.mne: {"dial": m.dial, "offset": m.offset, "low": m.low, "high": m.high}
            for m in hw.motors
        }


def format_state(name: str, snap: dict[str, dict[str, float]]) -> str:
    lines = [f"# specsrv state of {name}"]
    for mne, f in snap.items():
        lines.append(f"motor {mne} " + " ".join(f"{k}={f[k]!r}" for k in FIELDS))
    return "\n".join(lines) + "\n"


def parse_state(text: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """(state by mnemonic, problems) from the text of a state file."""
    out: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] != "motor" or len(words) < 2:
            problems.append(f"line {n} is not 'motor MNE key=value ...'")
            continue
        fields: dict[str, float] = {}
        for w in words[2:]:
            key, _, value = w.partition("=")
            try:
                v = float(value)
            except ValueError:
                v = math.nan
            if key not in FIELDS or not math.isfinite(v):
                problems.append(f"line {n}: bad field {key!r}")
                fields = {}
                break
            fields[key] = v
        if set(fields) == set(FIELDS):
            out[words[1]] = fields
    return out, problems


def apply(hw, state: dict[str, dict[str, float]]) -> list[str]:
    """Set motors from ``state``; return the mnemonics it names that ``hw`` lacks."""
    missing = []
    with hw.lock:
        for mne, f in state.items():
            m = hw.by_mne.get(mne)
            if m is None:
                missing.append(mne)
                continue
            m.dial = m.quantise(f["dial"])
            m.offset = f["offset"]
            m.low, m.high = sorted((f["low"], f["high"]))
    return missing


class StateFile:
    """``DIR/NAME/settings`` of one instance."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.name = name
        self.path = Path(directory) / name / "settings"
        self._saved: dict | None = None

    def load(self, hw) -> bool:
        """Apply a saved state to ``hw``; False when there is none."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_STATE + 1)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("state file %s cannot be read: %s", self.path, exc.strerror)
            return False
        if len(data) > MAX_STATE:
            log.warning("state file %s is larger than %d bytes: not used", self.path, MAX_STATE)
            return False
        state, problems = parse_state(data.decode("utf-8", "replace"))
        for p in problems[:5]:
            log.warning("state file %s: %s (skipped)", self.path, p)
        for mne in apply(hw, state):
            log.info("state file %s: motor %s is not configured (skipped)", self.path, mne)
        self._saved = snapshot(hw)
        log.info("motor positions, offsets and limits restored from %s", self.path)
        return True

    def save(self, hw) -> None:
        """Write the state if it changed since the last save (atomically)."""
        snap = snapshot(hw)
        if snap == self._saved:
            return
        text = format_state(self.name, snap)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".settings.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("state file %s cannot be written: %s", self.path, exc.strerror)
            return
        self._saved = snap

"""Reader for the ``KEY=VALUE # comment`` configuration format.

This is the format of the Archon detector controller server (and a handy one
for the other programs): one ``KEY=VALUE`` a line, ``#`` starts a comment
anywhere outside double quotes, a value in double quotes is taken between the
first and last quote, and ``KEY=(IDX VALUE)`` lines assign VALUE to index IDX
of the array KEY.  Keys are matched exactly (the C++ original matched by
prefix; see camerad.cfg(5)).

The reader is pure: it turns text into a :class:`KeyValueConfig` or raises
:class:`ConfigError` naming the file and line.  Which keys are allowed and
what they mean is the program's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_CONFIG_BYTES = 1 << 20

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ARRAY_RE = re.compile(r"^\(\s*(\S+)\s+(.*?)\s*\)$", re.S)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file and line."""


@dataclass
class KeyValueConfig:
    """Parsed ``KEY=VALUE`` file.

    ``scalars`` maps each plain key to its last value; ``arrays`` maps each
    array key to ``{index: value}``; ``lines`` keeps every assignment in file
    order as ``(lineno, key, index_or_None, value)``.
    """

    source: str = "<string>"
    scalars: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, dict[str, str]] = field(default_factory=dict)
    lines: list[tuple[int, str, str | None, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.scalars.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.scalars or key in self.arrays

    def keys(self) -> set[str]:
        return set(self.scalars) | set(self.arrays)


def _strip_comment(line: str) -> str:
    in_quotes = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "#" and not in_quotes:
            return line[:i]
    return line


def _unquote(value: str) -> str:
    first = value.find('"')
    if first == 0:
        last = value.rfind('"')
        if last > first:
            return value[first + 1 : last]
    return value


def parse_keyvalue(text: str, source: str = "<string>", min_length: int = 0) -> KeyValueConfig:
    """Parse configuration text; raise :class:`ConfigError` on the first bad line.

    A line whose text (comment removed, whitespace trimmed) is shorter than
    ``min_length`` characters is not an error but skipped and recorded in
    ``skipped`` (the Archon server's original ignored lines shorter than 3).
    """
    cfg = KeyValueConfig(source=source)
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if len(line) < min_length:
            cfg.skipped.append((lineno, line))
            continue
        if "=" not in line:
            raise ConfigError(f"{source}:{lineno}: expected KEY=VALUE, got {line[:60]!r}")
        key, value = line.split("=", 1)
        key = key.strip()
        value = value.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(f"{source}:{lineno}: invalid key {key[:60]!r}")
        if value.startswith("("):
            m = _ARRAY_RE.match(value)
            if not m:
                raise ConfigError(
                    f"{source}:{lineno}: array entry must be {key}=(IDX VALUE), got {value[:60]!r}"
                )
            idx, item = m.group(1), _unquote(m.group(2))
            cfg.arrays.setdefault(key, {})[idx] = item
            cfg.lines.append((lineno, key, idx, item))
        else:
            value = _unquote(value)
            cfg.scalars[key] = value
            cfg.lines.append((lineno, key, None, value))
    return cfg


def read_bounded(path: str | Path, limit: int, what: str = "configuration file") -> bytes:
    """Read a whole file of at most ``limit`` bytes; :class:`ConfigError` otherwise.

    Never reads more than ``limit + 1`` bytes, so a wrong path pointing at a
    huge file costs nothing.  ``what`` names the file in the messages.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} larger than {limit} bytes")
    return data


def read_keyvalue(path: str | Path, min_length: int = 0) -> KeyValueConfig:
    """Read and parse a configuration file (at most 1 MiB); see :func:`parse_keyvalue`."""
    p = Path(path)
    data = read_bounded(p, MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text file (byte {exc.start} is not UTF-8)") from None
    return parse_keyvalue(text, str(p), min_length)


def parse_bool(value: str, key: str = "value") -> bool:
    """``yes/no``, ``true/false``, ``on/off``, ``1/0`` (any case)."""
    v = value.strip().lower()
    if v in ("yes", "true", "on", "1", "y", "t"):
        return True
    if v in ("no", "false", "off", "0", "n", "f"):
        return False
    raise ConfigError(f"{key}: expected yes or no, got {value!r}")

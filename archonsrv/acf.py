"""ACF files: configuration memory lines, modes, detector geometry, tap gains (pure).

An ACF is the controller's configuration as the Archon GUI saves it.  This
module parses it into a :class:`Acf` (lines in order, the ``[SYSTEM]`` keys,
``[MODE_x]`` sections) and derives the image :class:`Geometry` of a mode.
Errors name the file, the line number and the rule broken, and never quote
the file's content (a key, a value, a section name): camerad sends them to
clients, who must not learn what a file holds (see :mod:`common.badinput`).
Key names that the rules themselves name (``PIXELCOUNT``, ``ARCH:HORI_AMPS``)
are not file content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .archon import blocks_for, param_entry

# ---------------------------------------------------------------------------
# ACF files and geometry
# ---------------------------------------------------------------------------


class AcfError(ValueError):
    """An ACF file that cannot be used."""


@dataclass
class Mode:
    name: str
    acf: dict[str, str] = field(default_factory=dict)  # ACF:KEY=VALUE overrides
    arch: dict[str, str] = field(default_factory=dict)  # ARCH:KEY=VALUE
    fits: dict[str, tuple[str, str]] = field(default_factory=dict)  # FITS:KEY=VALUE/COMMENT


@dataclass
class Acf:
    """The parts of an ACF file camerad uses.

    ``lines`` is the controller configuration memory in order (line number =
    index); ``params`` maps a parameter name to its line number.
    """

    lines: list[tuple[str, str]] = field(default_factory=list)
    system: dict[str, str] = field(default_factory=dict)
    modes: dict[str, Mode] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {k: i for i, (k, _) in enumerate(self.lines)}

    def params(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, (k, v) in enumerate(self.lines):
            entry = param_entry(k, v)
            if entry is not None:
                out[entry[0]] = i
        return out

    def values(self) -> dict[str, str]:
        return dict(self.lines)


def normalize_acf_line(key: str, value: str) -> tuple[str, str]:
    """Tabs to spaces, backslashes to slashes, double quotes removed."""
    key = key.replace("\t", " ").replace("\\", "/").replace('"', "").strip()
    value = value.replace("\t", " ").replace("\\", "/").replace('"', "").strip()
    return key, value


_SECTION_RE = re.compile(r"^\[([^\]]+)\]$")


def parse_acf(text: str, source: str = "<acf>") -> Acf:
    acf = Acf()
    section = ""
    mode: Mode | None = None
    mode_lines: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        m = _SECTION_RE.match(line)
        if m:
            section = m.group(1).strip().upper()
            mode = None
            if section.startswith("MODE_"):
                name = section[5:]
                if not name:
                    raise AcfError(f"{source}:{lineno}: empty mode name")
                if name == "RAW":
                    raise AcfError(f"{source}:{lineno}: mode name RAW is reserved")
                if name in acf.modes:
                    raise AcfError(f"{source}:{lineno}: duplicate mode section")
                mode = acf.modes[name] = Mode(name)
                mode_lines[name] = lineno
            continue
        if "=" not in line:
            raise AcfError(f"{source}: line {lineno} is not KEY=VALUE")
        key, value = line.split("=", 1)
        if section == "CONFIG":
            acf.lines.append(normalize_acf_line(key, value))
        elif section == "SYSTEM":
            k, v = normalize_acf_line(key, value)
            acf.system[k] = v
        elif mode is not None:
            kind, _, rest = line.partition(":")
            kind = kind.strip().upper()
            if "=" not in rest:
                raise AcfError(f"{source}: line {lineno} is not TYPE:KEY=VALUE")
            k, v = rest.split("=", 1)
            if kind == "ACF":
                k, v = normalize_acf_line(k, v)
                mode.acf[k] = v
            elif kind == "ARCH":
                mode.arch[k.strip().upper()] = v.strip()
            elif kind == "FITS":
                val, _, comment = v.partition("/")
                mode.fits[k.strip().upper()[:8]] = (val.strip(), comment.strip())
            else:
                raise AcfError(f"{source}: line {lineno}: mode line type is not ACF, ARCH or FITS")
    if not acf.lines:
        raise AcfError(f"{source}: no [CONFIG] section")
    if len(acf.lines) > 0xFFFF:
        raise AcfError(f"{source}: more than 65535 configuration lines")
    idx = acf.index()
    params = acf.params()
    for m in acf.modes.values():
        for k in m.acf:
            if k not in idx and k not in params:
                raise AcfError(
                    f"{source}: mode section at line {mode_lines[m.name]}: "
                    "an ACF: key is not in [CONFIG]"
                )
    if "DEFAULT" not in acf.modes:
        raise AcfError(f"{source}: no [MODE_DEFAULT] section")
    for m in acf.modes.values():
        for k in ("NUM_DETECT", "HORI_AMPS", "VERT_AMPS"):
            if m.name == "DEFAULT" and k not in m.arch:
                raise AcfError(f"{source}: [MODE_DEFAULT] needs ARCH:{k}")
    return acf


GEOMETRY_KEYS = (
    "FRAMEMODE",
    "LINECOUNT",
    "PIXELCOUNT",
    "RAWENABLE",
    "RAWSEL",
    "RAWSAMPLES",
    "RAWENDLINE",
    "BIGBUF",
    "SAMPLEMODE",
    "TAPLINES",
)


@dataclass
class Geometry:
    cols: int  # image width of one detector
    rows: int
    num_detect: int
    hori_amps: int
    vert_amps: int
    bytes_per_pixel: int
    raw: bool
    framemode: int
    activebufs: int
    amp_sections: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Width of the frame buffer image (detectors side by side)."""
        return self.cols * self.num_detect

    @property
    def height(self) -> int:
        return self.rows

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * self.bytes_per_pixel

    @property
    def blocks(self) -> int:
        return blocks_for(self.image_bytes)

    @property
    def bitpix(self) -> int:
        return 16 if self.bytes_per_pixel == 2 else 32


def _int_key(values: dict[str, str], key: str, lo: int = 0) -> int:
    if key not in values:
        raise AcfError(f"ACF key {key} missing")
    try:
        v = int(values[key])
    except ValueError:
        raise AcfError(f"ACF key {key} is not an integer") from None
    if v < lo:
        raise AcfError(f"ACF key {key} must be >= {lo}")
    return v


def compute_geometry(values: dict[str, str], arch: dict[str, str], raw: bool = False) -> Geometry:
    """Image geometry from config-memory values and a mode's ARCH: keys."""
    for k in GEOMETRY_KEYS:
        if k not in values:
            raise AcfError(f"ACF key {k} missing")
    num = _int_key(arch, "NUM_DETECT", 1)
    hori = _int_key(arch, "HORI_AMPS", 1)
    vert = _int_key(arch, "VERT_AMPS", 1)
    framemode = _int_key(values, "FRAMEMODE")
    pixelcount = _int_key(values, "PIXELCOUNT", 1)
    linecount = _int_key(values, "LINECOUNT", 1)
    samplemode = _int_key(values, "SAMPLEMODE")
    bigbuf = _int_key(values, "BIGBUF")
    activebufs = 2 if bigbuf == 1 else 3
    if raw:
        cols = _int_key(values, "RAWSAMPLES", 1)
        rows = _int_key(values, "RAWENDLINE") + 1
        return Geometry(cols, rows, 1, 1, 1, 2, True, framemode, activebufs, [(1, cols, 1, rows)])
    cols = pixelcount * hori
    rows = linecount * vert
    sections: list[tuple[int, int, int, int]] = []
    if framemode == 2:
        for y in range(vert):
            for x in range(hori):
                sections.append(
                    (
                        x * pixelcount + 1,
                        (x + 1) * pixelcount,
                        y * linecount + 1,
                        (y + 1) * linecount,
                    )
                )
    else:
        for x in range(hori):
            sections.append((x * pixelcount + 1, (x + 1) * pixelcount, 1, rows))
    bpp = 2 if samplemode == 0 else 4
    return Geometry(cols, rows, num, hori, vert, bpp, False, framemode, activebufs, sections)


_TAPLINE_RE = re.compile(r"^(AD|AM)(\d+)[LR]?$", re.I)


def tap_gains(values: dict[str, str]) -> dict[int, tuple[str, str]]:
    """0-based AD channel -> (gain, offset) from ``TAPLINEn=ADxx[L|R],gain,offset``."""
    out: dict[int, tuple[str, str]] = {}
    for k, v in values.items():
        if not re.match(r"^TAPLINE\d+$", k):
            continue
        parts = [p.strip() for p in v.split(",")]
        if len(parts) != 3:
            continue
        m = _TAPLINE_RE.match(parts[0])
        if not m:
            continue
        out[int(m.group(2)) - 1] = (parts[1], parts[2])
    return out

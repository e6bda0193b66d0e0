"""Commands of the Archon's modules: bias, heater, sensor, CDS keys, VCPU registers."""

from __future__ import annotations

from functools import partial

from .. import acf as ACF
from .. import archon as A
from .core import Camera, CommandError, float_arg, int_arg, num_text
from .table import LOADED, command

LV_TYPES = {"LVBias", "LVXBias"}
HV_TYPES = {"HVBias", "HVXBias"}
HEATER_TYPES = {"Heater", "HeaterX"}


def _module(cam: Camera, text: str, kinds: set[str], what: str) -> int:
    m = int_arg(text, "module", 1, 12)
    kind = cam.modules.get(m, "none")
    if kind not in kinds:
        raise CommandError(f"module {m} is {kind}, not a {what} module")
    return m


@command("bias", needs=(LOADED,))
def bias(cam: Camera, args: str) -> str:
    parts = args.split()
    if len(parts) not in (2, 3):
        raise CommandError("usage: bias <module> <channel> [volts]")
    m = _module(cam, parts[0], LV_TYPES | HV_TYPES, "bias")
    ch = int_arg(parts[1], "channel", 1, 30)
    lv = cam.modules[m] in LV_TYPES
    hc = ch > 24
    key = f"MOD{m}/{'LV' if lv else 'HV'}{'HC' if hc else 'LC'}_V{ch - 24 if hc else ch}"
    if len(parts) == 2:
        val = cam.values().get(key)
        if val is None:
            raise CommandError(f"{key} not in the loaded ACF")
        return val
    lo, hi = (0.0 if hc else -14.0, 14.0) if lv else (0.0, 31.0)
    volts = float_arg(parts[2], f"{key} volts", lo, hi)
    text = num_text(volts)
    cam.write_key(key, text, partial(cam.ctl.apply_module, m))
    return text


@command("heater", needs=(LOADED,))
def heater(cam: Camera, args: str) -> str:
    parts = args.split()
    if len(parts) < 2:
        raise CommandError("usage: heater <module> <A|B> [on|off target | PID | RAMP | ...]")
    m = _module(cam, parts[0], HEATER_TYPES, "heater")
    ab = parts[1].upper()
    if ab not in ("A", "B"):
        raise CommandError(f"heater must be A or B, got {parts[1][:10]!r}")
    pre = f"MOD{m}/HEATER{ab}"
    apply = partial(cam.ctl.apply_module, m)
    vals = cam.values()
    rest = parts[2:]
    sub = rest[0].upper() if rest else ""

    def get(k: str, default: str = "0") -> str:
        return vals.get(pre + k, default)

    if not rest:
        return f"{'ON' if get('ENABLE') == '1' else 'OFF'} {get('TARGET')}"
    if sub in ("ON", "OFF"):
        if len(rest) not in (1, 2):
            raise CommandError("usage: heater <module> <A|B> <on|off> [target]")
        target = get("TARGET")
        if len(rest) == 2:
            target = num_text(float_arg(rest[1], "target", -150.0, 50.0))
        cam.write_key(pre + "TARGET", target)
        cam.write_key(pre + "ENABLE", "1" if sub == "ON" else "0", apply)
        return f"{sub} {target}"
    if sub == "PID":
        if len(rest) == 1:
            return f"{get('P')} {get('I')} {get('D')}"
        if len(rest) != 4:
            raise CommandError("usage: heater <module> <A|B> PID [p i d]")
        pid = [num_text(float_arg(x, "PID term", 0.0, 10000.0)) for x in rest[1:]]
        for k, v in zip(("P", "I", "D"), pid, strict=True):
            cam.write_key(pre + k, v)
        apply()
        return " ".join(pid)
    if sub == "RAMP":
        if len(rest) == 1:
            on = get("RAMP") == "1"
            return f"{'ON' if on else 'OFF'} {get('RAMPRATE')}"
        state = rest[1].upper()
        if state not in ("ON", "OFF") or len(rest) > 3:
            raise CommandError("usage: heater <module> <A|B> RAMP [on|off [ramprate]]")
        rate = get("RAMPRATE")
        if state == "OFF":
            rate = "0"
        elif len(rest) == 3:
            rate = str(int_arg(rest[2], "ramp rate", 1, 32767))
        cam.write_key(pre + "RAMPRATE", rate)
        cam.write_key(pre + "RAMP", "1" if state == "ON" else "0", apply)
        return f"{state} {rate}"
    if sub == "ILIM":
        if len(rest) == 1:
            return get("IL")
        v = str(int_arg(rest[1], "ILIM", 0, 10000))
        cam.write_key(pre + "IL", v, apply)
        return v
    if sub == "INPUT":
        names = "ABC"
        if len(rest) == 1:
            idx = get("SENSOR")
            return names[int(idx)] if idx in ("0", "1", "2") else idx
        s = rest[1].upper()
        if s not in ("A", "B", "C"):
            raise CommandError(f"input must be A, B or C, got {rest[1][:10]!r}")
        cam.write_key(pre + "SENSOR", str(names.index(s)), apply)
        return s
    raise CommandError(f"unknown heater subcommand {rest[0][:20]!r}")


@command("sensor", needs=(LOADED,))
def sensor(cam: Camera, args: str) -> str:
    parts = args.split()
    if len(parts) < 2 or len(parts) > 4:
        raise CommandError("usage: sensor <module> <A|B|C> [current | AVG [N]]")
    m = _module(cam, parts[0], HEATER_TYPES, "heater")
    s = parts[1].upper()
    if s not in ("A", "B", "C"):
        raise CommandError(f"sensor must be A, B or C, got {parts[1][:10]!r}")
    apply = partial(cam.ctl.apply_module, m)
    vals = cam.values()
    if len(parts) >= 3 and parts[2].upper() == "AVG":
        key = f"MOD{m}/SENSOR{s}AVG"
        if len(parts) == 3:
            return str(1 << int(vals.get(key, "0") or 0))
        n = int_arg(parts[3], "averaging", 1, 256)
        if n & (n - 1):
            raise CommandError(f"averaging must be a power of 2 up to 256, got {n}")
        cam.write_key(key, str(n.bit_length() - 1), apply)
        return str(n)
    key = f"MOD{m}/SENSOR{s}CURRENT"
    if len(parts) == 2:
        return vals.get(key, "0")
    if len(parts) != 3:
        raise CommandError("usage: sensor <module> <A|B|C> [current]")
    v = str(int_arg(parts[2], "sensor current (nA)", 0, 1_600_000))
    cam.write_key(key, v, apply)
    return v


@command("cds", needs=(LOADED,))
def cds(cam: Camera, args: str) -> str:
    parts = args.split()
    if len(parts) not in (1, 2):
        raise CommandError("usage: cds <key> [value]")
    key = parts[0].upper()
    vals = cam.values()
    if key not in vals:
        raise CommandError(f"{key} not in the loaded ACF")
    if len(parts) == 1:
        return vals[key]
    if A.is_param_related(key) or "/" in key:
        raise CommandError(f"{key} is not a CDS key")
    cam.need_idle(key)
    old = vals[key]
    cam.write_key(key, parts[1], cam.ctl.apply_cds)
    if key in ACF.GEOMETRY_KEYS and cam.mode and cam.mode != "RAW":
        try:
            cam.geometry = ACF.compute_geometry(cam.values(), cam.mode_arch())
        except ACF.AcfError as exc:
            cam.write_key(key, old, cam.ctl.apply_cds)
            raise CommandError(f"cds {key}: {exc}") from None
    return parts[1]


@command("inreg", needs=(LOADED,))
def inreg(cam: Camera, args: str) -> str:
    parts = args.split()
    if len(parts) != 3:
        raise CommandError("usage: inreg <module> <reg> <value>")
    m = int_arg(parts[0], "module", 1, 12)
    reg = int_arg(parts[1], "register", 0, 15)
    val = int_arg(parts[2], "value", 0, 65535)
    key = f"MOD{m}/VCPU_INREG{reg}"
    if cam.modules.get(m) != "LVDS" and key not in cam.values():
        raise CommandError(f"module {m} ({cam.modules.get(m, 'none')}) has no VCPU")
    cam.write_key(key, str(val), partial(cam.ctl.apply_dio, m))
    return ""

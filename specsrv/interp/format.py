"""Text formatting of the spec language: printf formats and the tables that
``wa``, ``wm``/``lm`` and ``ct`` print."""

from __future__ import annotations

import math
import re
import time

from ..protocol import format_number
from .values import MAX_STRING, SpecError, bounded, to_num, to_str

_FMT_RE = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?[hlLqjzt]*([diouxXeEfFgGcs%])")


def spec_sprintf(fmt: str, args, max_len: int = MAX_STRING) -> str:
    """printf formatting as spec does; a field wider (or more precise) than
    ``max_len``, or a result longer, is a spec error, checked before anything
    that large is allocated."""
    args = list(args)
    total = 0
    out = []
    pos = 0
    ai = 0

    def nxt():
        nonlocal ai
        v = args[ai] if ai < len(args) else 0.0
        ai += 1
        return v

    for m in _FMT_RE.finditer(fmt):
        out.append(fmt[pos : m.start()])
        total += len(out[-1])
        pos = m.end()
        flags, width, prec, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if width == "*":
            w = to_num(nxt())
            width = str(int(w)) if math.isfinite(w) else "0"
        if prec == "*":
            pr = to_num(nxt())
            prec = str(max(int(pr), 0)) if math.isfinite(pr) else "0"
        if width and width.startswith("-"):
            flags, width = flags + "-", width[1:]
        if int(width or 0) > max_len or int(prec or 0) > max_len:
            raise SpecError(f"Out of memory: printf field wider than {max_len} characters.")
        spec = "%" + flags + (width or "") + ("." + prec if prec is not None else "")
        v = nxt()
        if conv in "diouxXc":
            n = to_num(v)
            iv = int(n) if math.isfinite(n) else 0
            if conv == "c":
                out.append(
                    (spec + "c") % (chr(iv & 0xFF) if not isinstance(v, str) else (v or " ")[0])
                )
            else:
                if conv in "uoxX" and iv < 0:
                    iv &= 0xFFFFFFFF
                out.append((spec + ("d" if conv in "iu" else conv)) % iv)
        elif conv in "eEfFgG":
            out.append((spec + conv) % to_num(v))
        else:
            out.append((spec + "s") % to_str(v))
        total += len(out[-1])
        if total > max_len:
            raise SpecError(f"String longer than {max_len} characters.")
    out.append(fmt[pos:])
    return bounded("".join(out), max_len)


def motor_table(motors, rows=("user", "dial")) -> str:
    lines = []
    for i in range(0, len(motors), 8):
        chunk = motors[i : i + 8]
        lines.append("".join(f"{m.name[:11]:>12}" for m in chunk))
        lines.append("".join(f"{m.mne:>12}" for m in chunk))
        for r in rows:
            lines.append("".join(f"{(m.user if r == 'user' else m.dial):12.4f}" for m in chunk))
        lines.append("")
    return "\n" + "\n".join(lines)


def limits_table(motors) -> str:
    head = "".join(f"{m.mne:>12}" for m in motors)
    lines = ["", f"{'':8}{head}"]
    lines.append("User")
    lim = [m.user_limits() for m in motors]
    lines.append(f"{' High':8}" + "".join(f"{hi:12.4f}" for _, hi in lim))
    lines.append(f"{' Current':8}" + "".join(f"{m.user:12.4f}" for m in motors))
    lines.append(f"{' Low':8}" + "".join(f"{lo:12.4f}" for lo, _ in lim))
    lines.append("Dial")
    lines.append(f"{' High':8}" + "".join(f"{m.high:12.4f}" for m in motors))
    lines.append(f"{' Current':8}" + "".join(f"{m.dial:12.4f}" for m in motors))
    lines.append(f"{' Low':8}" + "".join(f"{m.low:12.4f}" for m in motors))
    return "\n".join(lines) + "\n"


def count_report(hw) -> str:
    t = hw.count_elapsed
    lines = ["", time.strftime("%a %b %d %H:%M:%S %Y"), ""]
    for c in hw.counters:
        rate = f" ({c.value / t:.6g}/s)" if c.kind != "timer" and t > 0 else ""
        lines.append(f"{c.name:>12} = {format_number(c.value)}{rate}")
    return "\n".join(lines) + "\n"
